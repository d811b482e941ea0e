//! Log streaming needs a kubelet, which does not exist here: the API server's side of
//! `GET …/pods/NAME/log?follow=true` is played by a `tower_test` mock.

use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::client::Body;

#[tokio::test]
async fn a_pods_log_is_followed_line_by_line_from_its_job_container() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "jobs");
    let server = tokio::spawn(async move {
        let (request, respond) = handle.next_request().await.expect("a log request");
        let uri = request.uri().to_string();
        respond.send_response(
            Response::builder().body(Body::from(b"extracting 2024-03-01\nwrote 42 rows\n".to_vec())).unwrap(),
        );
        uri
    });
    let pods: Api<Pod> = Api::namespaced(client, "jobs");
    let lines = sluice_pod::kind::log_lines(&pods, "sluice-abc-1-xyz").await.unwrap();
    let lines: Vec<String> = futures::StreamExt::collect(lines).await;
    assert_eq!(lines, ["extracting 2024-03-01", "wrote 42 rows"]);
    let uri = server.await.unwrap();
    assert!(uri.starts_with("/api/v1/namespaces/jobs/pods/sluice-abc-1-xyz/log?"), "{uri}");
    assert!(uri.contains("follow=true") && uri.contains("container=job"), "{uri}");
}

#[tokio::test]
async fn a_log_the_server_refuses_is_an_error_not_an_empty_log() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "jobs");
    tokio::spawn(async move {
        let (_, respond) = handle.next_request().await.expect("a log request");
        let status = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "container \"job\" in pod \"p\" is waiting to start", "reason": "BadRequest", "code": 400});
        respond.send_response(
            Response::builder().status(400).body(Body::from(serde_json::to_vec(&status).unwrap())).unwrap(),
        );
    });
    let pods: Api<Pod> = Api::namespaced(client, "jobs");
    let error = sluice_pod::kind::log_lines(&pods, "p").await.err().expect("an error");
    assert!(error.to_string().contains("waiting to start"), "{error}");
}
