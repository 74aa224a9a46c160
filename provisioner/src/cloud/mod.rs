//! The cloud edge: reading a VPC into an [`Inventory`] and carrying out one
//! [`Action`], behind the [`Cloud`] trait. [`Aws`] is the one real
//! implementation (EC2, IAM, Auto Scaling), in a file per concern; tests
//! run it against the emulator. Errors are the contract's [`AwsError`],
//! naming the service, the call and the resource.

use async_trait::async_trait;
pub use natron_contract::aws::AwsError;
use natron_contract::aws::ErrorKind;

use crate::model::*;
use crate::plan::Action;

mod alarms;
mod convert;
mod fleet;
mod iam;
mod image;
mod inventory;
mod network;

/// The provisioner's cloud errors are the contract's AWS call errors.
pub type CloudError = AwsError;

pub(crate) const EC2: &str = "EC2";
pub(crate) const IAM: &str = "IAM";
pub(crate) const AUTOSCALING: &str = "AutoScaling";

/// Classifies an SDK error of `operation` on `resource`.
fn fail<'a, E, R>(
    service: &'static str,
    operation: &'static str,
    resource: &'a str,
) -> impl FnOnce(aws_smithy_runtime_api::client::result::SdkError<E, R>) -> AwsError + 'a
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    move |err| AwsError::from_sdk(service, operation, resource, err)
}

/// An answer that makes no sense for the request (no error code).
fn client_error(operation: &'static str, resource: &str, message: impl Into<String>) -> AwsError {
    AwsError::new(EC2, operation, resource, ErrorKind::Client, message)
}

/// How an AMI is chosen.
#[derive(Debug, Clone)]
pub enum ImageChoice {
    Id(String),
    /// The newest image whose name matches the pattern (`*` wildcards),
    /// owned by `owner` (`self`, `amazon` or an account id).
    /// Images whose architecture the API reports must be one of
    /// `architectures` (the instance type's).
    Newest {
        name: String,
        owner: String,
        architectures: Vec<String>,
    },
}

#[async_trait]
pub trait Cloud: Send + Sync {
    async fn inventory(&self, vpc_id: &str, group: &str) -> Result<Inventory, CloudError>;
    async fn find_image(&self, choice: &ImageChoice) -> Result<Image, CloudError>;
    /// An instance type's architectures (empty when the type is unknown)
    /// and private IPv4 addresses per interface.
    async fn instance_type(&self, instance_type: &str) -> Result<InstanceTypeInfo, CloudError>;
    /// Carries out an action whose references are all [`Ref::Id`]; returns
    /// the id of what it created.
    async fn execute(
        &self,
        action: &Action,
        vpc_id: &str,
        group: &str,
    ) -> Result<Option<String>, CloudError>;
    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), CloudError>;
}

pub struct Aws {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub autoscaling: aws_sdk_autoscaling::Client,
    pub cloudwatch: aws_sdk_cloudwatch::Client,
}

impl Aws {
    pub fn new(config: &aws_config::SdkConfig) -> Aws {
        Aws {
            ec2: aws_sdk_ec2::Client::new(config),
            iam: aws_sdk_iam::Client::new(config),
            autoscaling: aws_sdk_autoscaling::Client::new(config),
            cloudwatch: aws_sdk_cloudwatch::Client::new(config),
        }
    }
}

#[async_trait]
impl Cloud for Aws {
    async fn inventory(&self, vpc_id: &str, group: &str) -> Result<Inventory, CloudError> {
        self.read_inventory(vpc_id, group).await
    }

    async fn find_image(&self, choice: &ImageChoice) -> Result<Image, CloudError> {
        self.image(choice).await
    }

    async fn instance_type(&self, instance_type: &str) -> Result<InstanceTypeInfo, CloudError> {
        self.instance_type_info(instance_type).await
    }

    async fn execute(
        &self,
        action: &Action,
        vpc_id: &str,
        group: &str,
    ) -> Result<Option<String>, CloudError> {
        use Action::*;
        match action {
            CreateRole { .. }
            | PutRolePolicy { .. }
            | CreateInstanceProfile { .. }
            | AddRoleToInstanceProfile { .. }
            | RemoveRoleFromInstanceProfile { .. }
            | DeleteInstanceProfile { .. }
            | DeleteRolePolicy { .. }
            | DeleteRole { .. } => self.iam_action(action, group).await,
            CreateLaunchTemplate { .. }
            | CreateLaunchTemplateVersion { .. }
            | CreateAutoScalingGroup { .. }
            | UpdateAutoScalingGroup { .. }
            | PutLifecycleHook { .. }
            | DeleteAutoScalingGroup { .. }
            | WaitInstancesTerminated { .. }
            | DeleteLaunchTemplate { .. } => self.fleet_action(action, group).await,
            PutAlarm { alarm } => self.put_alarm(alarm, group).await.map(|_| None),
            DeleteAlarm { name } => self.delete_alarm(name).await.map(|_| None),
            _ => self.network_action(action, vpc_id, group).await,
        }
    }

    async fn associate_address(
        &self,
        allocation_id: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        self.ec2
            .associate_address()
            .allocation_id(allocation_id)
            .instance_id(instance_id)
            .allow_reassociation(true)
            .send()
            .await
            .map_err(fail(EC2, "AssociateAddress", allocation_id))?;
        Ok(())
    }
}
