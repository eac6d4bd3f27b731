//! The instance metadata service (IMDSv2, tokens required) one instance sees on
//! 127.0.0.1:1338 inside its namespace. Answers come from the live VPC model.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use axum::Router;
use chrono::Utc;

use super::ec2::model::{timestamp, Vpc, OWNER_ID};
use super::ec2::render::private_dns_name;

pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const MAX_TTL_SECONDS: u64 = 21600;
pub const ROLE_NAME: &str = "vpc-sim-node";

/// What one path names: a listing (entries, directories ending in '/') or a value.
#[derive(Debug, PartialEq, Eq)]
pub enum Node {
    Dir(Vec<String>),
    Leaf(String),
}

impl Node {
    pub fn render(self) -> String {
        match self {
            Node::Dir(entries) => entries.join("\n"),
            Node::Leaf(text) => text,
        }
    }
}

fn dir(entries: &[&str]) -> Option<Node> {
    Some(Node::Dir(entries.iter().map(|e| e.to_string()).collect()))
}

fn leaf(text: impl Into<String>) -> Option<Node> {
    Some(Node::Leaf(text.into()))
}

fn lines<T: ToString>(items: impl IntoIterator<Item = T>) -> Option<Node> {
    let joined: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    leaf(joined.join("\n"))
}

/// Resolves a path below `/latest/` for `instance_id`; `None` is a 404.
pub fn resolve(vpc: &Vpc, instance_id: &str, path: &str) -> Option<Node> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        [] => dir(&["dynamic", "meta-data"]),
        ["meta-data", rest @ ..] => meta_data(vpc, instance_id, rest),
        ["dynamic"] => dir(&["instance-identity/"]),
        ["dynamic", "instance-identity"] => dir(&["document"]),
        ["dynamic", "instance-identity", "document"] => identity_document(vpc, instance_id),
        _ => None,
    }
}

fn meta_data(vpc: &Vpc, instance_id: &str, segs: &[&str]) -> Option<Node> {
    let instance = vpc.instances.get(instance_id)?;
    let primary = vpc.primary_eni(instance_id)?;
    let hostname = private_dns_name(primary.primary_ip(), &vpc.region);
    match segs {
        [] => dir(&[
            "ami-id",
            "hostname",
            "iam/",
            "instance-id",
            "instance-type",
            "local-hostname",
            "local-ipv4",
            "mac",
            "network/",
            "placement/",
        ]),
        ["ami-id"] => leaf("ami-0123456789abcdef0"),
        ["hostname"] | ["local-hostname"] => leaf(hostname),
        ["instance-id"] => leaf(&instance.id),
        ["instance-type"] => leaf(instance.itype.name),
        ["local-ipv4"] => leaf(primary.primary_ip().to_string()),
        ["mac"] => leaf(&primary.mac),
        ["placement"] => dir(&["availability-zone", "availability-zone-id", "region"]),
        ["placement", "availability-zone"] => leaf(&instance.az),
        ["placement", "availability-zone-id"] => leaf(zone_id(&vpc.region, &instance.az)),
        ["placement", "region"] => leaf(&vpc.region),
        ["network"] => dir(&["interfaces/"]),
        ["network", "interfaces"] => dir(&["macs/"]),
        ["network", "interfaces", "macs"] => lines(
            vpc.instance_enis(instance_id)
                .iter()
                .map(|e| format!("{}/", e.mac)),
        ),
        ["network", "interfaces", "macs", mac, rest @ ..] => mac_data(vpc, instance_id, mac, rest),
        ["iam", rest @ ..] => iam(rest),
        _ => None,
    }
}

fn mac_data(vpc: &Vpc, instance_id: &str, mac: &str, segs: &[&str]) -> Option<Node> {
    let eni = vpc
        .instance_enis(instance_id)
        .into_iter()
        .find(|e| e.mac == mac)?;
    let attachment = eni.attachment.as_ref()?;
    let subnet = vpc.subnets.get(&eni.subnet_id)?;
    match segs {
        [] => {
            let mut fields = vec![
                "device-number",
                "interface-id",
                "ipv4-prefix",
                "local-hostname",
                "local-ipv4s",
                "mac",
                "network-card",
                "owner-id",
                "security-group-ids",
                "security-groups",
                "subnet-id",
                "subnet-ipv4-cidr-block",
                "vpc-id",
                "vpc-ipv4-cidr-block",
                "vpc-ipv4-cidr-blocks",
            ];
            if eni.prefixes.is_empty() {
                fields.retain(|f| *f != "ipv4-prefix");
            }
            dir(&fields)
        }
        ["device-number"] => leaf(attachment.device_index.to_string()),
        ["network-card"] => leaf(attachment.network_card_index.to_string()),
        ["interface-id"] => leaf(&eni.id),
        ["local-hostname"] => leaf(private_dns_name(eni.primary_ip(), &vpc.region)),
        ["local-ipv4s"] => lines(&eni.private_ips),
        ["ipv4-prefix"] if !eni.prefixes.is_empty() => lines(&eni.prefixes),
        ["mac"] => leaf(&eni.mac),
        ["owner-id"] => leaf(OWNER_ID),
        ["security-group-ids"] => lines(&eni.groups),
        ["security-groups"] => lines(eni.groups.iter().map(|g| vpc.group_name(g))),
        ["subnet-id"] => leaf(&eni.subnet_id),
        ["subnet-ipv4-cidr-block"] => leaf(subnet.pool.cidr().to_string()),
        ["vpc-id"] => leaf(&eni.vpc_id),
        ["vpc-ipv4-cidr-block"] => leaf(vpc.cidr.to_string()),
        ["vpc-ipv4-cidr-blocks"] => lines(vpc.cidrs()),
        _ => None,
    }
}

/// Role credentials, so an SDK's default credential chain works on the instance as on EC2.
/// The simulated EC2 accepts any signature.
fn iam(segs: &[&str]) -> Option<Node> {
    let now = Utc::now();
    match segs {
        [] => dir(&["info", "security-credentials/"]),
        ["info"] => leaf(
            serde_json::json!({
                "Code": "Success",
                "LastUpdated": timestamp(&now),
                "InstanceProfileArn": format!("arn:aws:iam::{OWNER_ID}:instance-profile/{ROLE_NAME}"),
                "InstanceProfileId": "AIPAVPCSIMNODE0000000",
            })
            .to_string(),
        ),
        ["security-credentials"] => dir(&[ROLE_NAME]),
        ["security-credentials", ROLE_NAME] => leaf(
            serde_json::json!({
                "Code": "Success",
                "LastUpdated": timestamp(&now),
                "Type": "AWS-HMAC",
                "AccessKeyId": "ASIAVPCSIMNODE000000",
                "SecretAccessKey": "vpc-sim-secret-access-key-not-a-real-secret",
                "Token": "vpc-sim-session-token",
                "Expiration": timestamp(&(now + chrono::Duration::hours(6))),
            })
            .to_string(),
        ),
        _ => None,
    }
}

fn identity_document(vpc: &Vpc, instance_id: &str) -> Option<Node> {
    let instance = vpc.instances.get(instance_id)?;
    let ip = vpc.primary_eni(instance_id)?.primary_ip();
    let doc = serde_json::json!({
        "accountId": OWNER_ID,
        "architecture": "x86_64",
        "availabilityZone": instance.az,
        "imageId": "ami-0123456789abcdef0",
        "instanceId": instance.id,
        "instanceType": instance.itype.name,
        "pendingTime": timestamp(&instance.launch_time),
        "privateIp": ip.to_string(),
        "region": vpc.region,
        "version": "2017-09-30",
    });
    leaf(serde_json::to_string_pretty(&doc).ok()?)
}

/// A zone id like `usw2-az1` from a zone name like `us-west-2a`.
fn zone_id(region: &str, az: &str) -> String {
    let short: String = region
        .split('-')
        .enumerate()
        .map(|(n, part)| match n {
            1 => part.chars().next().map(String::from).unwrap_or_default(),
            _ => part.to_string(),
        })
        .collect();
    let letter = az.chars().last().unwrap_or('a');
    format!("{short}-az{}", (letter as u8).saturating_sub(b'a') + 1)
}

pub struct ImdsState {
    vpc: Arc<Mutex<Vpc>>,
    instance_id: String,
    tokens: Mutex<HashMap<String, Instant>>,
}

pub fn router(vpc: Arc<Mutex<Vpc>>, instance_id: String) -> Router {
    let state = Arc::new(ImdsState {
        vpc,
        instance_id,
        tokens: Mutex::new(HashMap::new()),
    });
    Router::new()
        .route("/latest/api/token", put(issue_token))
        .fallback(serve_path)
        .with_state(state)
}

async fn issue_token(State(state): State<Arc<ImdsState>>, headers: HeaderMap) -> Response {
    // IMDS refuses token requests that went through a proxy.
    if headers.contains_key("x-forwarded-for") {
        return (StatusCode::FORBIDDEN, "Forbidden").into_response();
    }
    let ttl = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ttl| (1..=MAX_TTL_SECONDS).contains(ttl));
    let Some(ttl) = ttl else {
        return (StatusCode::BAD_REQUEST, "Bad Request").into_response();
    };
    let token: String = {
        use rand::Rng;
        let mut rng = rand::thread_rng();
        (0..56)
            .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
            .collect()
    };
    let now = Instant::now();
    let mut tokens = state.tokens.lock().expect("imds tokens lock");
    tokens.retain(|_, expiry| *expiry > now);
    tokens.insert(token.clone(), now + Duration::from_secs(ttl));
    ([(TTL_HEADER, ttl.to_string())], token).into_response()
}

async fn serve_path(
    State(state): State<Arc<ImdsState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed").into_response();
    }
    if !state.token_valid(&headers) {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    let Some(path) = uri.path().strip_prefix("/latest") else {
        return (StatusCode::OK, "latest").into_response();
    };
    let vpc = state.vpc.lock().expect("vpc lock");
    match resolve(&vpc, &state.instance_id, path) {
        Some(node) => ([("content-type", "text/plain")], node.render()).into_response(),
        None => (StatusCode::NOT_FOUND, "Not Found").into_response(),
    }
}

impl ImdsState {
    fn token_valid(&self, headers: &HeaderMap) -> bool {
        let Some(token) = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let tokens = self.tokens.lock().expect("imds tokens lock");
        tokens
            .get(token)
            .is_some_and(|expiry| *expiry > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::ec2::ops::Assign;
    use crate::sim::scenario::Scenario;

    fn vpc() -> Vpc {
        let s: Scenario = serde_json::from_value(serde_json::json!({
            "region": "us-west-2",
            "vpc": {"id": "vpc-1", "cidr": "10.0.0.0/16"},
            "subnets": [{"id": "subnet-a", "cidr": "10.0.0.0/24", "az": "us-west-2a"}],
            "securityGroups": [{"id": "sg-1", "name": "nodes"}],
            "instances": [{"id": "i-1", "type": "m5.large", "subnet": "subnet-a",
                "securityGroups": ["sg-1"], "role": "node", "privateIp": "10.0.0.10"}]
        }))
        .unwrap();
        Vpc::from_scenario(&s).unwrap()
    }

    fn get(vpc: &Vpc, path: &str) -> Option<String> {
        resolve(vpc, "i-1", path).map(Node::render)
    }

    #[test]
    fn instance_level_values() {
        let vpc = vpc();
        assert_eq!(get(&vpc, "/meta-data/instance-id").unwrap(), "i-1");
        assert_eq!(get(&vpc, "/meta-data/instance-type").unwrap(), "m5.large");
        assert_eq!(get(&vpc, "/meta-data/local-ipv4").unwrap(), "10.0.0.10");
        assert_eq!(
            get(&vpc, "/meta-data/placement/region").unwrap(),
            "us-west-2"
        );
        assert_eq!(
            get(&vpc, "/meta-data/placement/availability-zone-id").unwrap(),
            "usw2-az1"
        );
        let doc: serde_json::Value =
            serde_json::from_str(&get(&vpc, "/dynamic/instance-identity/document").unwrap())
                .unwrap();
        assert_eq!(doc["region"], "us-west-2");
        assert_eq!(doc["instanceId"], "i-1");
        assert!(get(&vpc, "/meta-data/nope").is_none());
    }

    #[test]
    fn per_mac_values_follow_the_eni() {
        let mut vpc = vpc();
        let mac = get(&vpc, "/meta-data/mac").unwrap();
        assert_eq!(
            get(&vpc, "/meta-data/network/interfaces/macs/").unwrap(),
            format!("{mac}/")
        );
        let base = format!("/meta-data/network/interfaces/macs/{mac}");
        assert_eq!(get(&vpc, &format!("{base}/device-number")).unwrap(), "0");
        assert_eq!(
            get(&vpc, &format!("{base}/security-group-ids")).unwrap(),
            "sg-1"
        );
        assert_eq!(
            get(&vpc, &format!("{base}/subnet-ipv4-cidr-block")).unwrap(),
            "10.0.0.0/24"
        );
        assert!(get(&vpc, &format!("{base}/ipv4-prefix")).is_none());
        assert!(!get(&vpc, &format!("{base}/"))
            .unwrap()
            .contains("ipv4-prefix"));

        let eni = vpc.primary_eni("i-1").unwrap().id.clone();
        let two = Assign {
            count: Some(2),
            ..Default::default()
        };
        vpc.assign(&eni, two).unwrap();
        let one_prefix = Assign {
            prefix_count: Some(1),
            ..Default::default()
        };
        vpc.assign(&eni, one_prefix).unwrap();
        let ips = get(&vpc, &format!("{base}/local-ipv4s")).unwrap();
        assert_eq!(ips, "10.0.0.10\n10.0.0.4\n10.0.0.5");
        assert_eq!(
            get(&vpc, &format!("{base}/ipv4-prefix")).unwrap(),
            "10.0.0.16/28"
        );
        assert!(get(&vpc, &base).unwrap().contains("ipv4-prefix\n"));
    }
}
