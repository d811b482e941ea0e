// Validates KEDA objects with KEDA's own schemas (npm @kubernetes-models/keda, generated from
// KEDA's Go types). Reads a JSON array of objects on stdin; prints one line per object
// ("ok <kind> <name>" or "invalid <kind> <name>: <reason>") and exits 1 if any is invalid or
// not a ScaledObject/ScaledJob. Run by kube-deploy/tests/validate.rs with NODE_PATH set to
// .tools/node/node_modules (scripts/install-tools.sh installs it).
import { readFileSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const modules = process.env.SLUICE_NODE_MODULES;
if (!modules) {
  console.error("SLUICE_NODE_MODULES is not set (the folder holding @kubernetes-models/keda)");
  process.exit(2);
}
// The package exports ES modules only: import its file by path (its own imports resolve from there).
const entry = path.join(path.resolve(modules), "@kubernetes-models/keda/keda.sh/v1alpha1/index.js");
const { ScaledObject, ScaledJob } = await import(pathToFileURL(entry).href);
const kinds = { ScaledObject, ScaledJob };

const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const object of objects) {
  const name = `${object.kind} ${object.metadata?.namespace}/${object.metadata?.name}`;
  const Model = kinds[object.kind];
  if (!Model || object.apiVersion !== "keda.sh/v1alpha1") {
    console.log(`invalid ${name}: not a keda.sh/v1alpha1 ScaledObject or ScaledJob`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok ${name}`);
  } catch (error) {
    console.log(`invalid ${name}: ${String(error.message ?? error).replace(/\s+/g, " ")}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
