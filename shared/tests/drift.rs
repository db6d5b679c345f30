//! No drift between the places a route is declared: template.yaml, the `cargo lambda watch`
//! router of `make dev`, the function crates, events/ and docs/openapi.yaml. And every function's
//! IAM policy names only resources the template declares, never `*`.

use serde_yaml::Value;
use std::collections::BTreeSet;
use std::path::Path;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn template() -> Value {
    serde_yaml::from_str(&read("template.yaml")).expect("template.yaml parses")
}

type Route = (String, String, String); // (METHOD, path, function)

fn untag(v: &Value) -> &Value {
    match v {
        Value::Tagged(t) => &t.value,
        other => other,
    }
}

fn template_functions(t: &Value) -> Vec<(String, &Value)> {
    t["Resources"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(k, r)| (k.as_str().unwrap().to_owned(), r))
        .collect()
}

fn template_routes(t: &Value) -> BTreeSet<Route> {
    let mut routes = BTreeSet::new();
    for (_, f) in template_functions(t) {
        let binary = f["Metadata"]["BuildProperties"]["Binary"].as_str().expect("every function names its Binary").to_owned();
        for (_, event) in f["Properties"]["Events"].as_mapping().into_iter().flatten() {
            if event["Type"].as_str() == Some("HttpApi") {
                let p = &event["Properties"];
                routes.insert((p["Method"].as_str().unwrap().to_uppercase(), p["Path"].as_str().unwrap().to_owned(), binary.clone()));
            }
        }
    }
    routes
}

fn router_routes() -> BTreeSet<Route> {
    let cargo: toml::Value = toml::from_str(&read("Cargo.toml")).unwrap();
    let router = cargo["workspace"]["metadata"]["lambda"]["watch"]["router"].as_table().expect("router table");
    let mut routes = BTreeSet::new();
    for (path, entries) in router {
        for entry in entries.as_array().expect("method lists") {
            routes.insert((entry["method"].as_str().unwrap().to_uppercase(), path.clone(), entry["function"].as_str().unwrap().to_owned()));
        }
    }
    routes
}

fn openapi_routes() -> BTreeSet<Route> {
    let doc: Value = serde_yaml::from_str(&read("docs/openapi.yaml")).unwrap();
    let mut routes = BTreeSet::new();
    for (path, ops) in doc["paths"].as_mapping().unwrap() {
        for (method, op) in ops.as_mapping().unwrap() {
            let function = op["operationId"].as_str().expect("every operation has an operationId = its function");
            routes.insert((method.as_str().unwrap().to_uppercase(), path.as_str().unwrap().to_owned(), function.to_owned()));
        }
    }
    routes
}

#[test]
fn template_router_and_openapi_declare_the_same_routes() {
    let t = template();
    let from_template = template_routes(&t);
    assert!(!from_template.is_empty());
    assert_eq!(from_template, router_routes(), "template.yaml vs the cargo lambda watch router in Cargo.toml");
    assert_eq!(from_template, openapi_routes(), "template.yaml vs docs/openapi.yaml (operationId = function)");
}

#[test]
fn every_function_has_a_crate_and_every_crate_a_function() {
    let t = template();
    let declared: BTreeSet<String> =
        template_functions(&t).iter().map(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap().to_owned()).collect();
    let crates: BTreeSet<String> = std::fs::read_dir(Path::new(ROOT).join("functions"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| Path::new(ROOT).join("functions").join(name).join("Cargo.toml").exists())
        .collect();
    assert_eq!(declared, crates);
}

#[test]
fn every_http_route_has_a_sample_event_with_its_route_key() {
    for (method, path, function) in template_routes(&template()) {
        let file = format!("events/{function}.json");
        let event: serde_json::Value = serde_json::from_str(&read(&file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(event["routeKey"], format!("{method} {path}"), "{file}");
        assert!(lambda_http::request::from_str(&read(&file)).is_ok(), "{file} parses as an API Gateway request");
    }
    let events: BTreeSet<String> = std::fs::read_dir(Path::new(ROOT).join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
        .collect();
    let functions: BTreeSet<String> = template_functions(&template())
        .iter()
        .map(|(_, f)| f["Metadata"]["BuildProperties"]["Binary"].as_str().unwrap().to_owned())
        .collect();
    for name in events {
        let function = if name == "schedule" { "sweep".to_owned() } else { name.split('.').next().unwrap().to_owned() };
        assert!(functions.contains(&function), "events/{name}.json has no function {function}");
    }
}

#[test]
fn every_policy_names_only_declared_resources_and_never_a_wildcard() {
    let t = template();
    let declared: BTreeSet<String> = t["Resources"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_owned()).collect();
    for (name, f) in template_functions(&t) {
        for policy in f["Properties"]["Policies"].as_sequence().into_iter().flatten() {
            for statement in policy["Statement"].as_sequence().expect("inline policies with statements") {
                let resources = match untag(&statement["Resource"]) {
                    Value::Sequence(list) => list.clone(),
                    _ => vec![statement["Resource"].clone()],
                };
                for resource in resources {
                    let text = match &resource {
                        Value::Tagged(tagged) => {
                            let target = tagged.value.as_str().unwrap_or_default();
                            match tagged.tag.to_string().as_str() {
                                "!Ref" | "!GetAtt" => {
                                    let logical = target.split('.').next().unwrap();
                                    assert!(declared.contains(logical), "{name} names undeclared {logical}");
                                }
                                "!Sub" => {
                                    for part in target.split("${").skip(1) {
                                        let var = part.split('}').next().unwrap().split('.').next().unwrap();
                                        assert!(
                                            var.starts_with("AWS::") || declared.contains(var) || t["Parameters"].get(var).is_some(),
                                            "{name}: {var}"
                                        );
                                    }
                                }
                                other => panic!("{name}: unexpected {other}"),
                            }
                            target.to_owned()
                        }
                        Value::String(s) => s.clone(),
                        other => panic!("{name}: resource {other:?}"),
                    };
                    // The only wildcards: a table's index names, and the connection ids of the
                    // WebSocket stage's Management API (they are made per connection).
                    let scoped = text.contains("/index/") || text.ends_with("/live/*/@connections/*");
                    assert!(!text.contains('*') || scoped, "{name} grants a wildcard resource: {text}");
                }
            }
        }
    }
}

#[test]
fn the_guardian_is_scheduled_once_per_shard_of_its_index() {
    let t = template();
    let sweep = template_functions(&t).into_iter().find(|(name, _)| name == "SweepFunction").map(|(_, f)| f).expect("the sweep function");
    let events = sweep["Properties"]["Events"].as_mapping().expect("sweep events");
    let mut shards: Vec<u64> = events
        .values()
        .filter(|e| e["Type"].as_str() == Some("ScheduleV2"))
        .map(|e| {
            let input: serde_json::Value = serde_json::from_str(e["Properties"]["Input"].as_str().expect("an Input per schedule")).unwrap();
            assert_eq!(e["Properties"]["ScheduleExpression"].as_str(), Some("rate(1 minute)"));
            input["shard"].as_u64().expect("a shard number")
        })
        .collect();
    shards.sort();
    let expected: Vec<u64> = (0..u64::from(shared::keys::GUARDIAN_SHARDS)).collect();
    assert_eq!(shards, expected, "one schedule per shard, each shard once");
    assert_eq!(sweep["Properties"]["ReservedConcurrentExecutions"].as_u64(), Some(u64::from(shared::keys::GUARDIAN_SHARDS)));
}

/// The packages of the lock file named `name`, one per version.
fn locked_versions(lock: &str, name: &str) -> Vec<String> {
    let doc: toml::Value = toml::from_str(lock).expect("Cargo.lock parses");
    let packages = doc["package"].as_array().expect("Cargo.lock lists packages");
    packages.iter().filter(|p| p["name"].as_str() == Some(name)).map(|p| p["version"].as_str().expect("a version").to_owned()).collect()
}

#[test]
fn the_workspace_links_one_tls_stack_with_one_crypto_provider() {
    let lock = read("Cargo.lock");
    assert_eq!(locked_versions(&lock, "rustls").len(), 1, "one rustls: {:?}", locked_versions(&lock, "rustls"));
    for second in ["aws-lc-rs", "aws-lc-sys", "openssl", "openssl-sys", "native-tls"] {
        assert!(locked_versions(&lock, second).is_empty(), "{second} is a second TLS stack or crypto provider");
    }
    assert_eq!(locked_versions(&lock, "ring").len(), 1);
}

/// The names of the crates `shared` (the library every Lambda links) depends on.
fn shared_dependencies() -> toml::value::Table {
    let manifest: toml::Value = toml::from_str(&read("shared/Cargo.toml")).expect("shared/Cargo.toml parses");
    manifest["dependencies"].as_table().expect("dependencies").clone()
}

#[test]
fn dev_only_code_stays_out_of_the_library_every_lambda_links() {
    let dependencies = shared_dependencies();
    for dev_only in ["serde_yaml", "ops", "doubles", "toml"] {
        assert!(!dependencies.contains_key(dev_only), "{dev_only} belongs to the ops crate or the tests, not to shared");
    }
}

/// Lambda hands a function its region and its role's credentials in the environment, so the
/// default credential chain (profiles, SSO, STS, the instance metadata client) is dead weight in a
/// bootstrap; the operator's command keeps it for laptops.
#[test]
fn the_library_every_lambda_links_leaves_the_default_credential_chain_to_ops() {
    let dependencies = shared_dependencies();
    for chain in ["aws-config", "aws-sdk-sts", "aws-sdk-sso", "aws-sdk-ssooidc"] {
        assert!(!dependencies.contains_key(chain), "{chain} is the default credential chain: ops may link it, shared may not");
    }
}

/// Every function's `main` builds its slots, then makes their warm-up round trips at once with
/// `ready` before its first poll: a chain without it would load its secrets on the first request
/// instead, and a missing secret would fail that request rather than init.
#[test]
fn every_main_warms_its_slots_together_before_serving() {
    for entry in std::fs::read_dir(Path::new(ROOT).join("functions")).unwrap() {
        let main = entry.unwrap().path().join("src/main.rs");
        let source = std::fs::read_to_string(&main).unwrap();
        let chain = source.lines().find(|l| l.contains("App::from_env()")).unwrap_or_else(|| panic!("{main:?} builds no App"));
        assert!(chain.trim_end().ends_with(".ready().await?;"), "{main:?}: {chain}");
        assert_eq!(
            chain.matches(".await").count(),
            chain.matches(".redis().await").count() + 1,
            "{main:?}: one wait besides redis's: {chain}"
        );
    }
}
