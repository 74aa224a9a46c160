//! Finding the AMI and what the instance type is (architectures, addresses per interface).

use aws_sdk_ec2::types as ec2t;
use natron_contract::aws::AwsError;

use super::convert::*;
use super::{fail, Aws, ImageChoice, EC2};
use crate::model::{Image, InstanceTypeInfo};

impl Aws {
    pub(super) async fn image(&self, choice: &ImageChoice) -> Result<Image, AwsError> {
        let (what, req) = match choice {
            ImageChoice::Id(id) => (id.clone(), self.ec2.describe_images().image_ids(id)),
            ImageChoice::Newest { name, owner, .. } => (
                format!("{name} owned by {owner}"),
                self.ec2
                    .describe_images()
                    .owners(owner)
                    .filters(filter("name", &[name]))
                    .filters(filter("state", &["available"])),
            ),
        };
        let out = req
            .send()
            .await
            .map_err(fail(EC2, "DescribeImages", &what))?;
        let mut images: Vec<_> = out
            .images()
            .iter()
            .filter(|i| match (choice, i.architecture()) {
                // No architectures (an unknown instance type, reported on
                // its own): any image, so its lookup is checked too.
                (ImageChoice::Newest { architectures, .. }, Some(a))
                    if !architectures.is_empty() =>
                {
                    architectures.iter().any(|x| x == a.as_str())
                }
                _ => true,
            })
            .collect();
        images.sort_by_key(|i| i.creation_date().unwrap_or_default().to_string());
        let image = images
            .last()
            .ok_or_else(|| AwsError::not_found(EC2, "DescribeImages", &what, "no such image"))?;
        Ok(Image {
            id: image.image_id().unwrap_or_default().to_string(),
            name: image.name().unwrap_or_default().to_string(),
            architecture: image.architecture().map(|a| a.as_str().to_string()),
        })
    }

    /// The type's architectures (none: unknown in the region) and its
    /// private IPv4 addresses per interface.
    pub(super) async fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> Result<InstanceTypeInfo, AwsError> {
        let out = self
            .ec2
            .describe_instance_types()
            .instance_types(ec2t::InstanceType::from(instance_type))
            .send()
            .await;
        match out {
            Ok(out) => {
                let types = out.instance_types();
                Ok(InstanceTypeInfo {
                    architectures: types
                        .iter()
                        .flat_map(|t| {
                            t.processor_info()
                                .map(|p| p.supported_architectures().to_vec())
                                .unwrap_or_default()
                        })
                        .map(|a| a.as_str().to_string())
                        .collect(),
                    addresses_per_interface: types
                        .iter()
                        .find_map(|t| t.network_info()?.ipv4_addresses_per_interface())
                        .and_then(|n| u32::try_from(n).ok()),
                })
            }
            Err(e) => {
                let e = fail(EC2, "DescribeInstanceTypes", instance_type)(e);
                if e.code.as_deref() == Some("InvalidInstanceType") {
                    Ok(InstanceTypeInfo::default())
                } else {
                    Err(e)
                }
            }
        }
    }
}
