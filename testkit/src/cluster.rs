//! A JetStream cluster of nats-servers on loopback: each node on random client, route and
//! monitoring ports of 127.0.0.1 with a temporary store and a name of its own, every node
//! routing to every other. A [`Stack`](crate::Stack) runs on it with
//! `.external(cluster.urls())`, and a node can be killed as a crash would.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sluice_local_nats::{ClusterOptions, NatsServer, Options, free_port, is_port_taken};

use crate::monitoring;

/// How long a fresh cluster may take to elect its JetStream meta leader with every node
/// current (usually well under a second).
pub const FORMATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Attempts at starting the whole cluster on freshly picked ports (another process may take
/// a port between picking and binding).
const START_ATTEMPTS: usize = 3;

/// How often [`Cluster::wait_until_formed`] asks the nodes again.
const FORMATION_POLL: Duration = Duration::from_millis(100);

/// The cluster's name (`--cluster_name`).
const CLUSTER_NAME: &str = "sluice-test";

/// One node: its server (`None` once killed), its name and ports.
pub struct Node {
    server: Option<NatsServer>,
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
}

impl Node {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }
}

/// A JetStream cluster of nats-servers on loopback; every node is killed on drop.
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts `size` nodes (`n1`, `n2`, …) and waits until they have formed
    /// ([`wait_until_formed`](Self::wait_until_formed)).
    pub fn start(size: usize) -> Result<Self> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(size) {
                Ok(cluster) => {
                    cluster.wait_until_formed(FORMATION_TIMEOUT)?;
                    return Ok(cluster);
                }
                Err(error) if is_port_taken(&error) => last = Some(error),
                Err(error) => {
                    return Err(error).context("starting a nats-server cluster node (`make tools` installs it)");
                }
            }
        }
        Err(last.map(anyhow::Error::from).unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
            .context(format!("starting a {size}-node nats-server cluster: ports kept being taken"))
    }

    fn try_start(size: usize) -> Result<Self, sluice_local_nats::LocalNatsError> {
        let port = || free_port().map_err(sluice_local_nats::LocalNatsError::Store);
        let mut planned = Vec::new();
        for index in 1..=size {
            planned.push((format!("n{index}"), port()?, port()?, port()?));
        }
        let routes: Vec<u16> = planned.iter().map(|(_, _, route, _)| *route).collect();
        let mut nodes = Vec::new();
        for (name, client, route, monitor) in planned {
            let server = NatsServer::start(Options {
                port: Some(client),
                monitor_port: Some(monitor),
                cluster: Some(ClusterOptions {
                    name: CLUSTER_NAME.to_owned(),
                    server_name: name.clone(),
                    route_port: route,
                    routes: routes.clone(),
                }),
                ..Default::default()
            })?;
            nodes.push(Node { server: Some(server), name, port: client, monitor_port: monitor });
        }
        Ok(Self { nodes })
    }

    /// Every node's client URL, comma-separated: what clients are given (they pick one and
    /// fail over to the others).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    /// The nodes still running.
    pub fn live(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| node.is_running())
    }

    /// Waits until every running node is healthy (`/healthz`: JetStream current) and agrees
    /// on a JetStream meta leader among the running nodes.
    pub fn wait_until_formed(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = self.formation();
            match &state {
                Ok(_leader) => return Ok(()),
                Err(_) if Instant::now() < deadline => std::thread::sleep(FORMATION_POLL),
                Err(error) => bail!("the cluster did not form within {timeout:?}: {error:#}"),
            }
        }
    }

    /// The meta leader every running node names, once each is healthy.
    fn formation(&self) -> Result<String> {
        let mut leaders = BTreeSet::new();
        for node in self.live() {
            let (status, body) = monitoring::get(node.monitor_port, "/healthz")?;
            if status != 200 {
                bail!("node {} is not healthy: {status} {body}", node.name);
            }
            let jsz = monitoring::get_json(node.monitor_port, "/jsz")?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().to_owned();
            if leader.is_empty() {
                bail!("node {} knows no meta leader yet", node.name);
            }
            leaders.insert(leader);
        }
        let live: BTreeSet<&str> = self.live().map(|node| node.name.as_str()).collect();
        match leaders.iter().next() {
            Some(leader) if leaders.len() == 1 && live.contains(leader.as_str()) => Ok(leader.clone()),
            _ => bail!("the nodes {live:?} name the meta leaders {leaders:?}"),
        }
    }

    /// The JetStream meta leader's name, as the first running node sees it.
    pub fn meta_leader(&self) -> Result<String> {
        let node = self.live().next().context("no node is running")?;
        let jsz = monitoring::get_json(node.monitor_port, "/jsz")?;
        Ok(jsz["meta_cluster"]["leader"].as_str().unwrap_or_default().to_owned())
    }

    /// Kills node `index` at once (SIGKILL), as a crash would; its store is kept until drop.
    pub fn kill(&mut self, index: usize) {
        if let Some(server) = self.nodes[index].server.as_mut() {
            server.kill();
        }
        // Dropped after the kill: the temporary store goes with it, which a dead node
        // does not need.
        self.nodes[index].server = None;
    }

    /// The node the process `pid` holds an established TCP connection to (its client port),
    /// from `/proc/<pid>/fd` and `/proc/<pid>/net/tcp`.
    pub fn node_of(&self, pid: i32) -> Result<usize> {
        let peers = established_peer_ports(pid)?;
        self.nodes
            .iter()
            .position(|node| node.is_running() && peers.contains(&node.port))
            .with_context(|| format!("process {pid} has no connection to a running node (its peers' ports: {peers:?})"))
    }
}

/// The remote ports of the established TCP connections that process `pid` holds.
fn established_peer_ports(pid: i32) -> Result<BTreeSet<u16>> {
    let mut inodes = BTreeSet::new();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).with_context(|| format!("reading /proc/{pid}/fd"))?;
    for fd in fds.flatten() {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else { continue };
        // `sl local_address rem_address st … inode`: addresses as HEXIP:HEXPORT, 01 = established.
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(remote), Some(state), Some(inode)) = (fields.get(2), fields.get(3), fields.get(9)) else {
                continue;
            };
            if *state != "01" || !inodes.contains(*inode) {
                continue;
            }
            if let Some(port) = remote.rsplit_once(':').and_then(|(_, port)| u16::from_str_radix(port, 16).ok()) {
                ports.insert(port);
            }
        }
    }
    Ok(ports)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(server) = node.server.as_mut() {
                server.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_connection_is_found_by_its_peer_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let peers = established_peer_ports(std::process::id() as i32).unwrap();
        assert!(peers.contains(&port), "{peers:?} lacks {port}");
    }

    #[test]
    fn three_nodes_form_and_the_two_left_elect_a_leader_when_one_dies() {
        let mut cluster = Cluster::start(3).unwrap();
        assert_eq!(cluster.urls().split(',').count(), 3);
        let leader = cluster.meta_leader().unwrap();
        let index = cluster.nodes.iter().position(|node| node.name == leader).unwrap();
        cluster.kill(index);
        cluster.wait_until_formed(FORMATION_TIMEOUT).unwrap();
        let new_leader = cluster.meta_leader().unwrap();
        assert_ne!(new_leader, leader);
        assert!(cluster.live().any(|node| node.name == new_leader));
    }
}
