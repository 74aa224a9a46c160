//! Carrying out the fleet's actions: the launch template and one auto
//! scaling group of one NAT per AZ, with its termination hook.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types as ec2t;
use base64::Engine;
use natron_contract::aws::AwsError;

use super::convert::*;
use super::{client_error, fail, Aws, AUTOSCALING, EC2};
use crate::model::*;
use crate::plan::{Action, PlannedLaunch, Ref};

impl Aws {
    pub(super) async fn fleet_action(
        &self,
        action: &Action,
        group: &str,
    ) -> Result<Option<String>, AwsError> {
        use Action::*;
        let ec2 = &self.ec2;
        match action {
            CreateLaunchTemplate { name, launch } => {
                let out = ec2
                    .create_launch_template()
                    .launch_template_name(name)
                    .version_description("natron apply")
                    .launch_template_data(self.launch_data(launch, group))
                    .tag_specifications(tag_spec(
                        ec2t::ResourceType::LaunchTemplate,
                        &[(GROUP_TAG, group)],
                    ))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateLaunchTemplate", name))?;
                Ok(out
                    .launch_template()
                    .and_then(|t| t.launch_template_id())
                    .map(str::to_string))
            }
            CreateLaunchTemplateVersion {
                template_id,
                launch,
            } => {
                let out = ec2
                    .create_launch_template_version()
                    .launch_template_id(template_id)
                    .version_description("natron apply")
                    .launch_template_data(self.launch_data(launch, group))
                    .send()
                    .await
                    .map_err(fail(EC2, "CreateLaunchTemplateVersion", template_id))?;
                let version = out
                    .launch_template_version()
                    .and_then(|v| v.version_number())
                    .ok_or_else(|| {
                        client_error(
                            "CreateLaunchTemplateVersion",
                            template_id,
                            "no version number in the answer",
                        )
                    })?;
                ec2.modify_launch_template()
                    .launch_template_id(template_id)
                    .default_version(version.to_string())
                    .send()
                    .await
                    .map_err(fail(EC2, "ModifyLaunchTemplate", template_id))?;
                Ok(None)
            }
            CreateAutoScalingGroup {
                name,
                az,
                subnet,
                template,
            } => {
                let tag = |k: &str, v: &str| {
                    aws_sdk_autoscaling::types::Tag::builder()
                        .key(k)
                        .value(v)
                        .propagate_at_launch(true)
                        .resource_id(name)
                        .resource_type("auto-scaling-group")
                        .build()
                };
                self.autoscaling
                    .create_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(asg_template(id(template)))
                    .min_size(1)
                    .max_size(1)
                    .desired_capacity(1)
                    .vpc_zone_identifier(subnet)
                    .health_check_type("EC2")
                    .tags(tag(GROUP_TAG, group))
                    .tags(tag(AZ_TAG, az))
                    .tags(tag("Name", &format!("natron-{group}-{az}")))
                    .send()
                    .await
                    .map_err(fail(AUTOSCALING, "CreateAutoScalingGroup", name))?;
                Ok(None)
            }
            UpdateAutoScalingGroup {
                name,
                subnet,
                template,
            } => {
                self.autoscaling
                    .update_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .launch_template(asg_template(template))
                    .vpc_zone_identifier(subnet)
                    .send()
                    .await
                    .map_err(fail(AUTOSCALING, "UpdateAutoScalingGroup", name))?;
                Ok(None)
            }
            PutLifecycleHook { group: asg, name } => {
                // Time for the agent's handoff before the instance stops;
                // CONTINUE so a silent agent never blocks a replacement.
                self.autoscaling
                    .put_lifecycle_hook()
                    .auto_scaling_group_name(asg)
                    .lifecycle_hook_name(name)
                    .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
                    .heartbeat_timeout(30)
                    .default_result("CONTINUE")
                    .send()
                    .await
                    .map_err(fail(AUTOSCALING, "PutLifecycleHook", asg))?;
                Ok(None)
            }
            DeleteAutoScalingGroup { name } => {
                self.autoscaling
                    .delete_auto_scaling_group()
                    .auto_scaling_group_name(name)
                    .force_delete(true)
                    .send()
                    .await
                    .map_err(fail(AUTOSCALING, "DeleteAutoScalingGroup", name))?;
                Ok(None)
            }
            WaitInstancesTerminated { ids } => {
                self.wait_terminated(ids).await?;
                Ok(None)
            }
            DeleteLaunchTemplate { id, .. } => {
                ec2.delete_launch_template()
                    .launch_template_id(id)
                    .send()
                    .await
                    .map_err(fail(EC2, "DeleteLaunchTemplate", id))?;
                Ok(None)
            }
            other => unreachable!("{other} is not carried out here"),
        }
    }
}

impl Aws {
    fn launch_data(&self, launch: &PlannedLaunch, group: &str) -> ec2t::RequestLaunchTemplateData {
        let sg = match &launch.security_group {
            Ref::Id(id) => id.clone(),
            Ref::New(key) => unreachable!("unresolved {key}"),
        };
        let tags = |kind| {
            ec2t::LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(kind)
                .tags(ec2t::Tag::builder().key(GROUP_TAG).value(group).build())
                .build()
        };
        ec2t::RequestLaunchTemplateData::builder()
            .image_id(&launch.image_id)
            .instance_type(ec2t::InstanceType::from(launch.instance_type.as_str()))
            .iam_instance_profile(
                ec2t::LaunchTemplateIamInstanceProfileSpecificationRequest::builder()
                    .name(&launch.instance_profile)
                    .build(),
            )
            // A public address for egress from the first second; an
            // Elastic IP, when asked for, replaces it.
            .network_interfaces(
                ec2t::LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(true)
                    .delete_on_termination(true)
                    .groups(sg)
                    .build(),
            )
            // IMDSv2 only, one hop (no container on the NAT reaches it),
            // instance tags visible (the agent reads natron:group there).
            .metadata_options(
                ec2t::LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(ec2t::LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(1)
                    .http_endpoint(ec2t::LaunchTemplateInstanceMetadataEndpointState::Enabled)
                    .instance_metadata_tags(ec2t::LaunchTemplateInstanceMetadataTagsState::Enabled)
                    .build(),
            )
            .user_data(base64::engine::general_purpose::STANDARD.encode(&launch.user_data))
            .tag_specifications(tags(ec2t::ResourceType::Instance))
            .tag_specifications(tags(ec2t::ResourceType::Volume))
            // AssociateAddress is authorized on the ENI too (agent policy).
            .tag_specifications(tags(ec2t::ResourceType::NetworkInterface))
            .build()
    }

    async fn wait_terminated(&self, ids: &[String]) -> Result<(), AwsError> {
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let out = self
                .ec2
                .describe_instances()
                .set_instance_ids(Some(ids.to_vec()))
                .send()
                .await
                .map_err(fail(EC2, "DescribeInstances", &ids.join(",")))?;
            let left: Vec<String> = out
                .reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter(|i| {
                    i.state().and_then(|s| s.name()) != Some(&ec2t::InstanceStateName::Terminated)
                })
                .filter_map(|i| i.instance_id().map(str::to_string))
                .collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(client_error(
                    "DescribeInstances",
                    &left.join(","),
                    "still not terminated after 15 minutes",
                ));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    /// Deleting a security group or subnet fails while the ENIs of just
    /// terminated instances linger; AWS frees them within minutes.
    pub(super) async fn retry_dependency<F, Fut>(
        &self,
        mut op: F,
    ) -> Result<Option<String>, AwsError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), AwsError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            match op().await {
                Ok(()) => return Ok(None),
                Err(e)
                    if e.code.as_deref() == Some("DependencyViolation")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_secs(5)).await
                }
                Err(e) => return Err(e),
            }
        }
    }
}
