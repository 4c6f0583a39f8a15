//! What people (not runners) do with the registry: register, list, inspect and remove
//! runners, each after [`policy`]'s decision. Registration is an operator right; a key may be
//! limited to some labels, so it cannot claim a pool set aside for another plugin.

use super::{
    FleetSummary, Registered, RunnerError, RunnerFilter, RunnerList, RunnerProfile, RunnerView,
    Runners,
};
use crate::auth::Principal;
use crate::policy;

impl Runners {
    /// Registers a runner on behalf of `by`.
    pub async fn register_as(
        &self,
        by: &Principal,
        name: &str,
        labels: Vec<String>,
        capacity: u32,
        profile: RunnerProfile,
    ) -> Result<Registered, RunnerError> {
        if !policy::may_register_runners(by) {
            return Err(RunnerError::Forbidden(
                "registering runners is an operator right: an admin, or a key an admin made with runners:register".into(),
            ));
        }
        let refused = policy::refused_runner_labels(by, &labels);
        if !refused.is_empty() {
            return Err(RunnerError::Forbidden(format!(
                "this key may not register runners carrying {refused:?}"
            )));
        }
        self.register_with_profile(&by.name, name, labels, capacity, profile)
            .await
    }

    /// The runners `by` may see (all for an admin, its own registrations otherwise) that
    /// `filter` lets through, with the summary of all it may see.
    pub async fn list_for(
        &self,
        by: &Principal,
        filter: &RunnerFilter,
    ) -> Result<RunnerList, RunnerError> {
        if !policy::may_register_runners(by) {
            return Err(RunnerError::Forbidden(
                "listing runners needs the runners:register right".into(),
            ));
        }
        let visible: Vec<RunnerView> = self
            .list()
            .await?
            .into_iter()
            .filter(|r| policy::may_manage_runner(by, &r.owner))
            .collect();
        let summary = FleetSummary::of(&visible);
        Ok(RunnerList {
            data: visible.into_iter().filter(|r| filter.matches(r)).collect(),
            summary,
        })
    }

    /// One runner, if `by` may see it (an operator's runner it may not see is not found).
    pub async fn get_for(&self, by: &Principal, id: &str) -> Result<RunnerView, RunnerError> {
        if !policy::may_register_runners(by) {
            return Err(RunnerError::Forbidden(
                "runners are managed with the runners:register right".into(),
            ));
        }
        self.get(id)
            .await
            .ok()
            .filter(|r| policy::may_manage_runner(by, &r.owner))
            .ok_or_else(|| RunnerError::UnknownRunner(id.to_owned()))
    }

    /// Removes a runner: its registrant or an admin only.
    pub async fn remove_as(&self, by: &Principal, id: &str) -> Result<(), RunnerError> {
        self.get_for(by, id).await?;
        self.unregister(id).await
    }
}
