//! Between the SDKs' types and natron's model: filters, tags, routes,
//! security group rules, ACL entries, launch data and policies.

use aws_sdk_ec2::types as ec2t;
use base64::Engine;
use serde_json::Value;

use crate::model::*;
use crate::plan::Ref;

pub(super) fn filter(name: &str, values: &[&str]) -> ec2t::Filter {
    ec2t::Filter::builder()
        .name(name)
        .set_values(Some(values.iter().map(|v| v.to_string()).collect()))
        .build()
}

pub(super) fn ec2_tags(tags: &[ec2t::Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

pub(super) fn tag_spec(kind: ec2t::ResourceType, tags: &[(&str, &str)]) -> ec2t::TagSpecification {
    ec2t::TagSpecification::builder()
        .resource_type(kind)
        .set_tags(Some(
            tags.iter()
                .map(|(k, v)| ec2t::Tag::builder().key(*k).value(*v).build())
                .collect(),
        ))
        .build()
}

pub(super) fn parse_route(r: &ec2t::Route) -> Option<Route> {
    Some(Route {
        destination: r
            .destination_cidr_block()
            .or(r.destination_ipv6_cidr_block())?
            .to_string(),
        gateway_id: r.gateway_id().map(str::to_string),
        instance_id: r.instance_id().map(str::to_string),
        interface_id: r.network_interface_id().map(str::to_string),
        nat_gateway_id: r.nat_gateway_id().map(str::to_string),
        other: r
            .vpc_peering_connection_id()
            .or(r.transit_gateway_id())
            .or(r.egress_only_internet_gateway_id())
            .or(r.local_gateway_id())
            .map(str::to_string),
        state: r.state().map(|s| RouteState::parse(s.as_str())),
    })
    .filter(|r| !r.destination.is_empty())
}

pub(super) fn parse_permissions(perms: &[ec2t::IpPermission]) -> Vec<Permission> {
    let mut out = Vec::new();
    for p in perms {
        let protocol = p.ip_protocol().unwrap_or("-1").to_string();
        let (from_port, to_port) = if protocol == "-1" {
            (None, None)
        } else {
            (p.from_port(), p.to_port())
        };
        for r in p.ip_ranges() {
            if let Some(Ok(cidr)) = r.cidr_ip().map(str::parse) {
                out.push(Permission {
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer: Peer::Cidr(cidr),
                });
            }
        }
        for r in p.ipv6_ranges() {
            if let Some(Ok(cidr)) = r.cidr_ipv6().map(str::parse) {
                out.push(Permission {
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer: Peer::Cidr6(cidr),
                });
            }
        }
        for g in p.user_id_group_pairs() {
            if let Some(id) = g.group_id() {
                out.push(Permission {
                    protocol: protocol.clone(),
                    from_port,
                    to_port,
                    peer: Peer::Group(Ref::Id(id.to_string())),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn to_ip_permissions(rules: &[Permission]) -> Vec<ec2t::IpPermission> {
    rules
        .iter()
        .map(|r| {
            let b = ec2t::IpPermission::builder()
                .ip_protocol(&r.protocol)
                .set_from_port(r.from_port)
                .set_to_port(r.to_port);
            match &r.peer {
                Peer::Cidr(c) => b.ip_ranges(
                    ec2t::IpRange::builder()
                        .cidr_ip(c.to_string())
                        .description(if c.prefix_len() == 0 {
                            "natron: egress to anywhere"
                        } else {
                            "natron: served private subnet"
                        })
                        .build(),
                ),
                Peer::Cidr6(c) => b.ipv6_ranges(
                    ec2t::Ipv6Range::builder()
                        .cidr_ipv6(c.to_string())
                        .description("natron: served private subnet (NAT64)")
                        .build(),
                ),
                Peer::Group(g) => b.user_id_group_pairs(
                    ec2t::UserIdGroupPair::builder()
                        .group_id(id(g))
                        .description("natron: health checks between NATs")
                        .build(),
                ),
            }
            .build()
        })
        .collect()
}

pub(super) fn parse_acl_entry(e: &ec2t::NetworkAclEntry) -> Option<AclEntry> {
    Some(AclEntry {
        number: e.rule_number()?,
        egress: e.egress()?,
        protocol: e.protocol()?.to_string(),
        allow: e.rule_action()? == &ec2t::RuleAction::Allow,
        cidr: e.cidr_block()?.parse().ok()?,
        ports: e
            .port_range()
            .and_then(|p| Some((u16::try_from(p.from()?).ok()?, u16::try_from(p.to()?).ok()?))),
    })
}

pub(super) fn parse_launch(data: &ec2t::ResponseLaunchTemplateData) -> Option<LaunchSpec> {
    let sg = data
        .network_interfaces()
        .first()
        .and_then(|n| n.groups().first().cloned())
        .or_else(|| data.security_group_ids().first().cloned())?;
    let user_data = data
        .user_data()
        .and_then(|u| base64::engine::general_purpose::STANDARD.decode(u).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    Some(LaunchSpec {
        image_id: data.image_id()?.to_string(),
        instance_type: data.instance_type()?.as_str().to_string(),
        instance_profile: data.iam_instance_profile()?.name()?.to_string(),
        security_group_id: sg,
        user_data,
    })
}

/// IAM returns policy documents URL-encoded.
pub(super) fn parse_policy(text: &str) -> Value {
    let decoded = percent_encoding::percent_decode_str(text).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or(Value::String(text.to_string()))
}

pub(super) fn iam_tag(key: &str, value: &str) -> aws_sdk_iam::types::Tag {
    aws_sdk_iam::types::Tag::builder()
        .key(key)
        .value(value)
        .build()
        .expect("key and value are set")
}

pub(super) fn asg_template(
    template_id: &str,
) -> aws_sdk_autoscaling::types::LaunchTemplateSpecification {
    aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder()
        .launch_template_id(template_id)
        .version("$Default")
        .build()
}

pub(super) fn id(r: &Ref) -> &str {
    match r {
        Ref::Id(id) => id,
        Ref::New(key) => unreachable!("unresolved {key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_read_back_url_encoded_or_not() {
        let doc = r#"{"Version":"2012-10-17"}"#;
        let encoded =
            percent_encoding::utf8_percent_encode(doc, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(parse_policy(doc), parse_policy(&encoded));
        assert_eq!(parse_policy(doc)["Version"], "2012-10-17");
    }
}
