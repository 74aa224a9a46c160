//! Carrying out the IAM actions: the agent's role, its policy and the
//! instance profile.

use natron_contract::aws::AwsError;

use super::convert::*;
use super::{fail, Aws, IAM};
use crate::model::GROUP_TAG;
use crate::plan::Action;

impl Aws {
    pub(super) async fn iam_action(
        &self,
        action: &Action,
        group: &str,
    ) -> Result<Option<String>, AwsError> {
        use Action::*;
        match action {
            CreateRole { name } => {
                self.iam
                    .create_role()
                    .role_name(name)
                    .description(format!("natron agent of group {group}"))
                    .assume_role_policy_document(crate::documents::trust_policy().to_string())
                    .tags(iam_tag(GROUP_TAG, group))
                    .send()
                    .await
                    .map_err(fail(IAM, "CreateRole", name))?;
                Ok(None)
            }
            PutRolePolicy {
                role,
                name,
                document,
            } => {
                self.iam
                    .put_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .policy_document(document.to_string())
                    .send()
                    .await
                    .map_err(fail(IAM, "PutRolePolicy", &format!("{role}/{name}")))?;
                Ok(None)
            }
            CreateInstanceProfile { name } => {
                self.iam
                    .create_instance_profile()
                    .instance_profile_name(name)
                    .tags(iam_tag(GROUP_TAG, group))
                    .send()
                    .await
                    .map_err(fail(IAM, "CreateInstanceProfile", name))?;
                Ok(None)
            }
            AddRoleToInstanceProfile { profile, role } => {
                self.iam
                    .add_role_to_instance_profile()
                    .instance_profile_name(profile)
                    .role_name(role)
                    .send()
                    .await
                    .map_err(fail(IAM, "AddRoleToInstanceProfile", profile))?;
                Ok(None)
            }
            RemoveRoleFromInstanceProfile { profile, role } => {
                self.iam
                    .remove_role_from_instance_profile()
                    .instance_profile_name(profile)
                    .role_name(role)
                    .send()
                    .await
                    .map_err(fail(IAM, "RemoveRoleFromInstanceProfile", profile))?;
                Ok(None)
            }
            DeleteInstanceProfile { name } => {
                self.iam
                    .delete_instance_profile()
                    .instance_profile_name(name)
                    .send()
                    .await
                    .map_err(fail(IAM, "DeleteInstanceProfile", name))?;
                Ok(None)
            }
            DeleteRolePolicy { role, name } => {
                self.iam
                    .delete_role_policy()
                    .role_name(role)
                    .policy_name(name)
                    .send()
                    .await
                    .map_err(fail(IAM, "DeleteRolePolicy", &format!("{role}/{name}")))?;
                Ok(None)
            }
            DeleteRole { name } => {
                self.iam
                    .delete_role()
                    .role_name(name)
                    .send()
                    .await
                    .map_err(fail(IAM, "DeleteRole", name))?;
                Ok(None)
            }
            other => unreachable!("{other} is not carried out here"),
        }
    }
}
