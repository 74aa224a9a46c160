//! An IMDSv2 stub answering each caller, identified by its source address,
//! from the emulator's state (the emulator's own stub is fixed to one fake
//! instance and lacks the token TTL header).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;

use crate::vpc::{InstanceView, VpcView};

pub const ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// The lab's stand-in for Auto Scaling: an instance tag whose value IMDS
/// serves as `autoscaling/target-lifecycle-state` (404 without it, as for
/// an instance outside an auto scaling group).
pub const LIFECYCLE_TAG: &str = "lab:target-lifecycle-state";
/// Served as `spot/instance-action` (EC2's two-minute Spot interruption
/// notice), 404 without it.
pub const SPOT_ACTION_TAG: &str = "lab:spot-instance-action";
/// Served as `events/recommendations/rebalance`, 404 without it.
pub const REBALANCE_TAG: &str = "lab:rebalance-recommendation";
/// An instance tagged so has no instance profile: IMDS serves no
/// credentials (404 at `iam/security-credentials`, as on EC2).
pub const NO_PROFILE_TAG: &str = "lab:no-instance-profile";
/// The instance profile role every other lab instance has.
pub const ROLE: &str = "natron-lab";
const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";
const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";

#[derive(Clone)]
pub struct Imds {
    pub view: Arc<RwLock<VpcView>>,
    pub region: String,
    /// Served at `user-data`, per instance id (404 for an instance without).
    pub user_data: UserData,
    /// Requests so far (token and metadata), per caller address.
    pub requests: Requests,
    tokens: Arc<Mutex<HashMap<String, Instant>>>,
}

/// Each instance's user data, as its launch template gives it; the lab
/// changes it between boots of a VM (a configuration change).
#[derive(Clone, Default)]
pub struct UserData(Arc<RwLock<HashMap<String, String>>>);

impl UserData {
    pub fn set(&self, instance_id: &str, text: String) {
        self.0
            .write()
            .expect("user data")
            .insert(instance_id.to_string(), text);
    }

    fn of(&self, instance_id: &str) -> Option<String> {
        self.0.read().expect("user data").get(instance_id).cloned()
    }
}

/// How many requests each caller made: a NAT's IMDS rate is a figure the
/// tests bound.
#[derive(Clone, Default)]
pub struct Requests(Arc<Mutex<HashMap<Ipv4Addr, u64>>>);

impl Requests {
    fn count(&self, peer: SocketAddr) {
        if let SocketAddr::V4(v4) = peer {
            *self
                .0
                .lock()
                .expect("requests")
                .entry(*v4.ip())
                .or_default() += 1;
        }
    }

    pub fn from(&self, caller: Ipv4Addr) -> u64 {
        self.0
            .lock()
            .expect("requests")
            .get(&caller)
            .copied()
            .unwrap_or(0)
    }
}

impl Imds {
    pub fn new(view: Arc<RwLock<VpcView>>, region: &str) -> Imds {
        Imds {
            view,
            region: region.to_string(),
            user_data: UserData::default(),
            requests: Requests::default(),
            tokens: Arc::default(),
        }
    }

    pub fn router(self) -> Router {
        Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/{*path}", get(metadata))
            .with_state(self)
    }

    /// Serves on `listener` (bound inside the lab's control namespace).
    pub async fn serve(self, listener: tokio::net::TcpListener) {
        let app = self
            .router()
            .into_make_service_with_connect_info::<SocketAddr>();
        let _ = axum::serve(listener, app).await;
    }
}

async fn token(
    State(imds): State<Imds>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    imds.requests.count(peer);
    let ttl: Option<u64> = headers
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let Some(ttl) = ttl.filter(|t| (1..=21600).contains(t)) else {
        return (StatusCode::BAD_REQUEST, "missing or invalid TTL header\n").into_response();
    };
    let token = format!("lab-{:x}", rand_u64());
    imds.tokens
        .lock()
        .expect("tokens")
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    ([(TTL_HEADER, ttl.to_string())], token).into_response()
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

async fn metadata(
    State(imds): State<Imds>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Response {
    imds.requests.count(peer);
    let valid = headers
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|t| imds.tokens.lock().expect("tokens").get(t).copied())
        .is_some_and(|expiry| expiry > Instant::now());
    if !valid {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let SocketAddr::V4(peer) = peer else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let view = imds.view.read().expect("view").clone();
    let Some(instance) = view.instance_by_ip(*peer.ip()) else {
        return (
            StatusCode::NOT_FOUND,
            "caller is not an instance of the lab VPC\n",
        )
            .into_response();
    };
    if path == "user-data" {
        return match imds.user_data.of(&instance.id) {
            Some(text) => text.into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    match answer(&view, instance, &imds.region, path.trim_end_matches('/')) {
        Some(body) => body.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The value at `path` (under /latest/) for `i`. Pure.
pub fn answer(view: &VpcView, i: &InstanceView, region: &str, path: &str) -> Option<String> {
    let mac_prefix = format!("meta-data/network/interfaces/macs/{}/", i.mac);
    if let Some(leaf) = path.strip_prefix(&mac_prefix) {
        let cidrs: Vec<String> = view.cidrs.iter().map(|c| c.to_string()).collect();
        return match leaf {
            "interface-id" => Some(i.interface_id.clone()),
            "vpc-id" => Some(view.vpc_id.clone()),
            "subnet-id" => Some(i.subnet_id.clone()),
            "vpc-ipv4-cidr-blocks" => Some(cidrs.join("\n")),
            "vpc-ipv4-cidr-block" => cidrs.first().cloned(),
            // As on EC2: absent for a VPC without IPv6.
            "vpc-ipv6-cidr-blocks" => (!view.ipv6_cidrs.is_empty()).then(|| {
                let v6: Vec<String> = view.ipv6_cidrs.iter().map(|c| c.to_string()).collect();
                v6.join("\n")
            }),
            "local-ipv4s" => Some(i.private_ip.to_string()),
            // As on EC2: absent for an interface without IPv6 addresses.
            "ipv6s" => (!i.ipv6s.is_empty()).then(|| {
                let v6: Vec<String> = i.ipv6s.iter().map(|a| a.to_string()).collect();
                v6.join("\n")
            }),
            "public-ipv4s" => i.public_ip.map(|p| p.to_string()),
            _ => None,
        };
    }
    if let Some(key) = path.strip_prefix("meta-data/tags/instance/") {
        return i.metadata_tags.then(|| i.tags.get(key).cloned()).flatten();
    }
    let profile = !i.tags.contains_key(NO_PROFILE_TAG);
    match path {
        "meta-data/instance-id" => Some(i.id.clone()),
        "meta-data/placement/availability-zone" => Some(i.availability_zone.clone()),
        "meta-data/placement/region" => Some(region.to_string()),
        "meta-data/mac" => Some(i.mac.clone()),
        // An instance profile, as on EC2: the SDK's default credential
        // chain ends here.
        "meta-data/iam/security-credentials" => profile.then(|| ROLE.to_string()),
        p if profile && p == format!("meta-data/iam/security-credentials/{ROLE}") => Some(
            serde_json::json!({
                "Code": "Success",
                "Type": "AWS-HMAC",
                "AccessKeyId": "testing",
                "SecretAccessKey": "testing",
                "Token": "testing",
                "Expiration": humantime::format_rfc3339_seconds(
                    std::time::SystemTime::now() + Duration::from_secs(6 * 3600)
                )
                .to_string(),
                "LastUpdated": humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    .to_string(),
            })
            .to_string(),
        ),
        "meta-data/autoscaling/target-lifecycle-state" => i.tags.get(LIFECYCLE_TAG).cloned(),
        "meta-data/spot/instance-action" => i.tags.get(SPOT_ACTION_TAG).cloned(),
        "meta-data/events/recommendations/rebalance" => i.tags.get(REBALANCE_TAG).cloned(),
        "meta-data/local-ipv4" => Some(i.private_ip.to_string()),
        "meta-data/public-ipv4" => i.public_ip.map(|p| p.to_string()),
        "meta-data/tags/instance" => i
            .metadata_tags
            .then(|| i.tags.keys().cloned().collect::<Vec<_>>().join("\n")),
        "dynamic/instance-identity/document" => Some(
            serde_json::json!({
                "instanceId": i.id,
                "availabilityZone": i.availability_zone,
                "region": region,
                "privateIp": i.private_ip.to_string(),
                "accountId": "123456789012",
                "architecture": "x86_64",
            })
            .to_string(),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn fixture() -> (VpcView, InstanceView) {
        let i = InstanceView {
            id: "i-1".into(),
            state: "running".into(),
            subnet_id: "subnet-1".into(),
            availability_zone: "us-east-1a".into(),
            private_ip: "10.0.0.10".parse().unwrap(),
            public_ip: None,
            interface_id: "eni-1".into(),
            mac: "02:00:00:00:00:01".into(),
            source_dest_check: true,
            tags: BTreeMap::from([("natron:group".to_string(), "lab".to_string())]),
            metadata_tags: false,
            secondary: vec![],
            ipv6s: vec![],
        };
        let v = VpcView {
            vpc_id: "vpc-1".into(),
            cidrs: vec![
                "10.0.0.0/16".parse().unwrap(),
                "100.64.0.0/16".parse().unwrap(),
            ],
            ipv6_cidrs: vec![],
            instances: vec![i.clone()],
            route_tables: vec![],
        };
        (v, i)
    }

    #[test]
    fn answers_from_the_instance() {
        let (v, mut i) = fixture();
        let a = |i: &InstanceView, p: &str| answer(&v, i, "us-east-1", p);
        assert_eq!(a(&i, "meta-data/instance-id").as_deref(), Some("i-1"));
        assert_eq!(
            a(
                &i,
                "meta-data/network/interfaces/macs/02:00:00:00:00:01/vpc-ipv4-cidr-blocks"
            )
            .as_deref(),
            Some("10.0.0.0/16\n100.64.0.0/16")
        );
        assert_eq!(
            a(&i, "meta-data/public-ipv4"),
            None,
            "404 without a public address"
        );
        assert_eq!(
            a(&i, "meta-data/tags/instance/natron:group"),
            None,
            "tags hidden unless enabled"
        );
        i.metadata_tags = true;
        assert_eq!(
            a(&i, "meta-data/tags/instance/natron:group").as_deref(),
            Some("lab")
        );
        assert_eq!(
            a(
                &i,
                "meta-data/network/interfaces/macs/ff:ff:ff:ff:ff:ff/vpc-id"
            ),
            None
        );
    }

    #[test]
    fn ipv6_as_ec2_serves_it_and_absent_without() {
        let (mut v, mut i) = fixture();
        let mac = "meta-data/network/interfaces/macs/02:00:00:00:00:01/";
        let a = |v: &VpcView, i: &InstanceView, leaf: &str| {
            answer(v, i, "us-east-1", &format!("{mac}{leaf}"))
        };
        assert_eq!(a(&v, &i, "ipv6s"), None, "404 without IPv6 addresses");
        assert_eq!(
            a(&v, &i, "vpc-ipv6-cidr-blocks"),
            None,
            "404 without a block"
        );
        v.ipv6_cidrs = vec!["2600:1f18:aa00::/56".parse().unwrap()];
        i.ipv6s = vec![
            "2600:1f18:aa00:1::10".parse().unwrap(),
            "2600:1f18:aa00:1::11".parse().unwrap(),
        ];
        assert_eq!(
            a(&v, &i, "ipv6s").as_deref(),
            Some("2600:1f18:aa00:1::10\n2600:1f18:aa00:1::11")
        );
        assert_eq!(
            a(&v, &i, "vpc-ipv6-cidr-blocks").as_deref(),
            Some("2600:1f18:aa00::/56")
        );
    }
}
