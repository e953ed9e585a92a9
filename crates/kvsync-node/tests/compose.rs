//! The deployment files agree with the binary and with each other: every `KVSYNC_*`
//! variable they set is one `kvsync-node` accepts, published ports lead to the port the
//! node listens on, and every host name a node connects to is a service of the same file
//! (or the `KAFKA_HOST` of a multi-machine setup). `docker-compose config` (in
//! scripts/check-compose.sh) checks the syntax; this checks the meaning.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use yaml_rust2::{Yaml, YamlLoader};

const COMPOSE_FILES: [&str; 4] = [
    "docker-compose-kafka.yml",
    "docker-compose-node1.yml",
    "docker-compose-node2.yml",
    "docker-compose-all.yml",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(repo().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn load(name: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&read(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(docs.len(), 1, "{name}: one YAML document");
    docs.remove(0)
}

/// The environment variables `kvsync-node --help` documents, e.g. `[env: KVSYNC_LOG=]`.
fn accepted_variables() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_kvsync-node"))
        .arg("--help")
        .env_clear()
        .output()
        .expect("run kvsync-node --help");
    assert!(out.status.success());
    // Help text is wrapped: "[env:" and the name may sit on different lines.
    let help = String::from_utf8(out.stdout).unwrap();
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(
        names.len() >= 20,
        "too few variables parsed from --help: {names:?}"
    );
    names
}

struct Service<'a> {
    name: &'a str,
    def: &'a Yaml,
}

fn services(doc: &Yaml) -> Vec<Service<'_>> {
    doc["services"]
        .as_hash()
        .expect("a services map")
        .iter()
        .map(|(k, v)| Service {
            name: k.as_str().expect("service names are strings"),
            def: v,
        })
        .collect()
}

fn environment(service: &Service) -> BTreeMap<String, String> {
    let env = &service.def["environment"];
    match env {
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    Yaml::Null => String::new(),
                    other => panic!("{}: unexpected value {other:?}", service.name),
                };
                (k.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Yaml::BadValue => BTreeMap::new(),
        other => panic!("{}: environment must be a map, got {other:?}", service.name),
    }
}

/// `${VAR:-default}` becomes `default`, `${VAR:?message}` or `${VAR}` becomes `$VAR`.
fn with_defaults(raw: &str) -> String {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${") + start;
        let inner = &rest[start + 2..end];
        if let Some((_, default)) = inner.split_once(":-") {
            out.push_str(default);
        } else {
            let name = inner.split([':', '?']).next().unwrap();
            out.push('$');
            out.push_str(name);
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Every `${NAME...}` a file refers to.
fn referenced_variables(text: &str) -> BTreeSet<String> {
    text.split("${")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        })
        .collect()
}

fn is_node(service: &Service) -> bool {
    environment(service).contains_key("KVSYNC_NODE_ID")
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().expect("a port")
}

/// `host:port` pairs of a MongoDB URI (`mongodb://user:pw@a:1,b:2/db?x`).
fn mongo_hosts(uri: &str) -> Vec<String> {
    let rest = uri.strip_prefix("mongodb://").expect("a mongodb:// URI");
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let hosts = rest.split(['/', '?']).next().unwrap();
    hosts.split(',').map(str::to_owned).collect()
}

#[test]
fn every_kvsync_variable_is_one_the_node_accepts() {
    let accepted = accepted_variables();
    for file in COMPOSE_FILES {
        let doc = load(file);
        for service in services(&doc) {
            for name in environment(&service).keys() {
                if name.starts_with("KVSYNC_") {
                    assert!(
                        accepted.contains(name),
                        "{file}: service {} sets {name}, which kvsync-node does not accept",
                        service.name
                    );
                }
            }
        }
    }
    for line in read("Dockerfile").lines() {
        for word in line.split_whitespace() {
            if let Some((name, _)) = word.split_once('=') {
                if name.starts_with("KVSYNC_") {
                    assert!(accepted.contains(name), "Dockerfile sets unknown {name}");
                }
            }
        }
    }
    // And the README documents every one of them.
    let readme = read("README.md");
    for name in &accepted {
        assert!(
            readme.contains(name.as_str()),
            "README does not document {name}"
        );
    }
}

#[test]
fn published_ports_reach_the_port_each_node_listens_on() {
    let mut node_ports = BTreeMap::new();
    for file in COMPOSE_FILES {
        let doc = load(file);
        let mut ids_here = BTreeSet::new();
        for service in services(&doc).iter().filter(|s| is_node(s)) {
            let env = environment(service);
            let listen = port_of(&env["KVSYNC_HTTP_ADDR"]);
            let ports = service.def["ports"].as_vec().expect("nodes publish a port");
            assert_eq!(
                ports.len(),
                1,
                "{file}: {} publishes one port",
                service.name
            );
            let mapping = with_defaults(ports[0].as_str().expect("\"host:container\""));
            let (host, container) = mapping.rsplit_once(':').unwrap();
            assert_eq!(
                container.parse::<u16>().unwrap(),
                listen,
                "{file}: {} publishes {mapping} but listens on {listen}",
                service.name
            );
            // Node ids are unique within a file, and a node keeps its port in every file.
            let id = env["KVSYNC_NODE_ID"].clone();
            let host: u16 = host.parse().unwrap();
            assert!(
                ids_here.insert(id.clone()),
                "{file}: node id {id} used twice"
            );
            if let Some((other_file, other_port)) = node_ports.insert(id.clone(), (file, host)) {
                assert_eq!(
                    other_port, host,
                    "node {id} is on port {other_port} in {other_file} but {host} in {file}"
                );
            }
        }
    }
    // The original's ports: node1 on 3003, node2 on 3004, in both deployments.
    for (file, id, port) in [
        ("docker-compose-node1.yml", "node1", 3003),
        ("docker-compose-node2.yml", "node2", 3004),
        ("docker-compose-all.yml", "node1", 3003),
        ("docker-compose-all.yml", "node2", 3004),
    ] {
        let doc = load(file);
        let node = services(&doc)
            .into_iter()
            .find(|s| environment(s).get("KVSYNC_NODE_ID").map(String::as_str) == Some(id))
            .unwrap_or_else(|| panic!("{file} runs {id}"));
        let mapping = with_defaults(node.def["ports"][0].as_str().unwrap());
        assert!(
            mapping.starts_with(&format!("{port}:")),
            "{file}: {id} on {mapping}"
        );
    }
    assert!(read("Dockerfile").contains("EXPOSE 3003"));
}

#[test]
fn every_host_a_service_connects_to_is_a_service_of_the_same_file() {
    for file in COMPOSE_FILES {
        let doc = load(file);
        let all = services(&doc);
        let names: BTreeSet<&str> = all.iter().map(|s| s.name).collect();
        let resolvable = |host: &str| names.contains(host) || host == "$KAFKA_HOST";
        for service in &all {
            for dep in service.def["depends_on"].as_vec().into_iter().flatten() {
                let dep = dep.as_str().unwrap();
                assert!(
                    names.contains(dep),
                    "{file}: {} depends on unknown {dep}",
                    service.name
                );
            }
            if !is_node(service) {
                continue;
            }
            let env = environment(service);
            for broker in with_defaults(&env["KVSYNC_KAFKA_BROKERS"]).split(',') {
                let (host, port) = broker.rsplit_once(':').expect("host:port");
                assert!(
                    resolvable(host),
                    "{file}: {} uses broker {host}",
                    service.name
                );
                assert_eq!(port, "9092", "{file}: {} broker port", service.name);
                if names.contains(host) {
                    let kafka = all.iter().find(|s| s.name == host).unwrap();
                    let advertised = environment(kafka)["KAFKA_ADVERTISED_LISTENERS"].clone();
                    assert!(
                        advertised.contains(&format!("//{host}:{port}")),
                        "{file}: {host} advertises {advertised}, not {host}:{port}"
                    );
                }
            }
            // A password with '@', ':', '/', '?' or '#' would break a URI built from it
            // (and the node would restart in a loop): it travels apart from the URI.
            assert!(
                !env["KVSYNC_MONGODB_URI"].contains('@')
                    && env.contains_key("KVSYNC_MONGODB_USERNAME")
                    && env.contains_key("KVSYNC_MONGODB_PASSWORD"),
                "{file}: {} puts MongoDB credentials in its URI",
                service.name
            );
            for host in mongo_hosts(&with_defaults(&env["KVSYNC_MONGODB_URI"])) {
                let (host, port) = host.rsplit_once(':').unwrap_or((&host, "27017"));
                assert!(
                    names.contains(host),
                    "{file}: {} uses MongoDB {host}",
                    service.name
                );
                assert_eq!(port, "27017");
            }
        }
        // A node's MongoDB belongs to that node alone.
        let mongos: Vec<String> = all
            .iter()
            .filter(|s| is_node(s))
            .map(|s| mongo_hosts(&with_defaults(&environment(s)["KVSYNC_MONGODB_URI"])).join(","))
            .collect();
        let distinct: BTreeSet<&String> = mongos.iter().collect();
        assert_eq!(
            distinct.len(),
            mongos.len(),
            "{file}: nodes share a MongoDB"
        );
    }
    // Across machines: the broker advertises ${KAFKA_HOST}:9092 and publishes 9092.
    let kafka = load("docker-compose-kafka.yml");
    let broker = &services(&kafka)[0];
    assert!(
        with_defaults(&environment(broker)["KAFKA_ADVERTISED_LISTENERS"])
            .contains("//$KAFKA_HOST:9092")
    );
    assert_eq!(
        with_defaults(broker.def["ports"][0].as_str().unwrap()),
        "9092:9092"
    );
}

#[test]
fn env_example_sets_every_variable_the_multi_machine_files_use() {
    let example = read(".env.example");
    let set: BTreeSet<&str> = example
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for file in COMPOSE_FILES {
        for name in referenced_variables(&read(file)) {
            assert!(
                set.contains(name.as_str()),
                "{file} uses ${{{name}}}, which .env.example does not set"
            );
        }
    }
}
