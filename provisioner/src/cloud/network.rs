//! Carrying out the EC2 network actions: subnets, the security group,
//! route tables and their associations, Elastic IPs.

use aws_sdk_ec2::types as ec2t;
use natron_contract::aws::AwsError;

use super::convert::*;
use super::{fail, Aws, EC2};
use crate::layout::Names;
use crate::model::*;
use crate::plan::Action;

impl Aws {
    pub(super) async fn network_action(
        &self,
        action: &Action,
        vpc_id: &str,
        group: &str,
    ) -> Result<Option<String>, AwsError> {
        use Action::*;
        let ec2 = &self.ec2;
        match action {
            CreateSubnet { az, cidr, .. } => {
                let name = Names::private_subnet(group, az);
                let out = ec2
                    .create_subnet()
                    .vpc_id(vpc_id)
                    .availability_zone(az)
                    .cidr_block(cidr.to_string())
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::Subnet,
                        &[(GROUP_TAG, group), (AZ_TAG, az), ("Name", &name)],
                    ))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateSubnet", &format!("{cidr} in {az}")))?;
                Ok(out.subnet().and_then(|s| s.subnet_id()).map(str::to_string))
            }
            CreateSecurityGroup { name } => {
                let out = ec2
                    .create_security_group()
                    .group_name(name)
                    .description(format!("natron NAT instances of group {group}"))
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::SecurityGroup,
                        &[(GROUP_TAG, group), ("Name", name)],
                    ))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateSecurityGroup", name))?;
                Ok(out.group_id().map(str::to_string))
            }
            AuthorizeIngress { group: sg, rules } => {
                ec2.authorize_security_group_ingress()
                    .group_id(id(sg))
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail(EC2, "AuthorizeSecurityGroupIngress", id(sg)))?;
                Ok(None)
            }
            RevokeIngress { group: sg, rules } => {
                ec2.revoke_security_group_ingress()
                    .group_id(sg)
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail(EC2, "RevokeSecurityGroupIngress", sg))?;
                Ok(None)
            }
            AuthorizeEgress { group: sg, rules } => {
                ec2.authorize_security_group_egress()
                    .group_id(sg)
                    .set_ip_permissions(Some(to_ip_permissions(rules)))
                    .send()
                    .await
                    .map_err(fail(EC2, "AuthorizeSecurityGroupEgress", sg))?;
                Ok(None)
            }
            AllocateAddress { az, slot } => {
                let slot = slot.map(|s| s.to_string());
                let mut tags = vec![(GROUP_TAG, group), (AZ_TAG, az.as_str())];
                if let Some(slot) = &slot {
                    tags.push((natron_contract::tags::SLOT, slot));
                }
                let out = ec2
                    .allocate_address()
                    .domain(ec2t::DomainType::Vpc)
                    .tag_specifications(tag_spec(ec2t::ResourceType::ElasticIp, &tags))
                    .send()
                    .await
                    .map_err(fail(EC2, "AllocateAddress", az))?;
                Ok(out.allocation_id().map(str::to_string))
            }
            CreateRouteTable {
                az,
                subnet,
                previous,
                ..
            } => {
                let name = format!("natron-{group}-{}", id(subnet));
                let mut tags = vec![
                    (GROUP_TAG, group),
                    (AZ_TAG, az.as_str()),
                    (SUBNET_TAG, id(subnet)),
                    ("Name", &name),
                ];
                if let Some(p) = previous {
                    tags.push((PREVIOUS_TAG, p));
                }
                let out = ec2
                    .create_route_table()
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(ec2t::ResourceType::RouteTable, &tags))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateRouteTable", id(subnet)))?;
                Ok(out
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .map(str::to_string))
            }
            AssociateRouteTable {
                table,
                subnet,
                replace_association,
                ..
            } => {
                match replace_association {
                    Some(a) => {
                        ec2.replace_route_table_association()
                            .association_id(a)
                            .route_table_id(id(table))
                            .send()
                            .await
                            .map_err(fail(EC2, "ReplaceRouteTableAssociation", a))?;
                    }
                    None => {
                        ec2.associate_route_table()
                            .route_table_id(id(table))
                            .subnet_id(id(subnet))
                            .send()
                            .await
                            .map_err(fail(EC2, "AssociateRouteTable", id(table)))?;
                    }
                }
                Ok(None)
            }
            RestoreAssociation {
                association, to, ..
            } => {
                ec2.replace_route_table_association()
                    .association_id(association)
                    .route_table_id(to)
                    .send()
                    .await
                    .map_err(fail(EC2, "ReplaceRouteTableAssociation", association))?;
                Ok(None)
            }
            Disassociate { association, .. } => {
                ec2.disassociate_route_table()
                    .association_id(association)
                    .send()
                    .await
                    .map_err(fail(EC2, "DisassociateRouteTable", association))?;
                Ok(None)
            }
            ReleaseAddress {
                allocation_id,
                association_id,
            } => {
                if let Some(a) = association_id {
                    if let Err(e) = ec2.disassociate_address().association_id(a).send().await {
                        let e = fail(EC2, "DisassociateAddress", a)(e);
                        if !e.is_not_found() {
                            return Err(e);
                        }
                    }
                }
                ec2.release_address()
                    .allocation_id(allocation_id)
                    .send()
                    .await
                    .map_err(fail(EC2, "ReleaseAddress", allocation_id))?;
                Ok(None)
            }
            DeleteRouteTable { id } => {
                ec2.delete_route_table()
                    .route_table_id(id)
                    .send()
                    .await
                    .map_err(fail(EC2, "DeleteRouteTable", id))?;
                Ok(None)
            }
            DeleteSecurityGroup { id } => {
                self.retry_dependency(|| async {
                    ec2.delete_security_group()
                        .group_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(fail(EC2, "DeleteSecurityGroup", id))
                })
                .await
            }
            DeleteSubnet { id } => {
                self.retry_dependency(|| async {
                    ec2.delete_subnet()
                        .subnet_id(id)
                        .send()
                        .await
                        .map(|_| ())
                        .map_err(fail(EC2, "DeleteSubnet", id))
                })
                .await
            }
            CreateEgressOnlyGateway {} => {
                let name = format!("natron-{group}");
                let out = ec2
                    .create_egress_only_internet_gateway()
                    .vpc_id(vpc_id)
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::EgressOnlyInternetGateway,
                        &[(GROUP_TAG, group), ("Name", &name)],
                    ))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateEgressOnlyInternetGateway", vpc_id))?;
                Ok(out
                    .egress_only_internet_gateway()
                    .and_then(|g| g.egress_only_internet_gateway_id())
                    .map(str::to_string))
            }
            RouteIpv6Out {
                table,
                gateway,
                replace: false,
            } => {
                ec2.create_route()
                    .route_table_id(id(table))
                    .destination_ipv6_cidr_block(IPV6_DEFAULT_ROUTE)
                    .egress_only_internet_gateway_id(id(gateway))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateRoute", id(table)))?;
                Ok(None)
            }
            RouteIpv6Out {
                table,
                gateway,
                replace: true,
            } => {
                ec2.replace_route()
                    .route_table_id(id(table))
                    .destination_ipv6_cidr_block(IPV6_DEFAULT_ROUTE)
                    .egress_only_internet_gateway_id(id(gateway))
                    .send()
                    .await
                    .map_err(fail(EC2, "ReplaceRoute", id(table)))?;
                Ok(None)
            }
            TagNat64 { table } => {
                self.tag(id(table), NAT64_TAG, "true").await?;
                Ok(None)
            }
            EnableDns64 { subnet, table } => {
                // The record first: a crash in between leaves a tag that
                // only makes a later release turn off what is off.
                self.tag(id(table), DNS64_TAG, "on").await?;
                self.set_dns64(subnet, true).await?;
                Ok(None)
            }
            DisableDns64 { subnet } => {
                self.set_dns64(subnet, false).await?;
                Ok(None)
            }
            DeleteEgressOnlyGateway { id } => {
                ec2.delete_egress_only_internet_gateway()
                    .egress_only_internet_gateway_id(id)
                    .send()
                    .await
                    .map_err(fail(EC2, "DeleteEgressOnlyInternetGateway", id))?;
                Ok(None)
            }
            other => unreachable!("{other} is not carried out here"),
        }
    }

    async fn tag(&self, resource: &str, key: &str, value: &str) -> Result<(), AwsError> {
        self.ec2
            .create_tags()
            .resources(resource)
            .tags(ec2t::Tag::builder().key(key).value(value).build())
            .send()
            .await
            .map_err(fail(EC2, "CreateTags", resource))?;
        Ok(())
    }

    async fn set_dns64(&self, subnet: &str, on: bool) -> Result<(), AwsError> {
        self.ec2
            .modify_subnet_attribute()
            .subnet_id(subnet)
            .enable_dns64(ec2t::AttributeBooleanValue::builder().value(on).build())
            .send()
            .await
            .map_err(fail(EC2, "ModifySubnetAttribute", subnet))?;
        Ok(())
    }
}
