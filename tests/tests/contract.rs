//! What the crates agree on, checked across them: the configuration the
//! provisioner writes as user data is one the agent accepts.

#[test]
fn the_user_data_natron_apply_writes_is_a_valid_agent_configuration() {
    for metrics in [false, true] {
        let text = natron::documents::agent_config(
            "prod-1",
            &natron::documents::AgentOptions::with_metrics(metrics),
        );
        let settings = natron_agent::core::config::Config::parse("user-data", &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(settings.group.as_deref(), Some("prod-1"));
        assert_eq!(settings.listen.port(), natron_contract::AGENT_PORT);
        // The policy lets the agent publish where its configuration says.
        let namespace = settings.cloudwatch.map(|c| c.namespace);
        assert_eq!(
            namespace.as_deref(),
            metrics.then_some(natron::documents::METRICS_NAMESPACE)
        );
    }
}
