//! natron's nftables table: reading it live, comparing it with the desired
//! one, and replacing it atomically when they differ.
//!
//! The [`Nft`] trait is the narrow edge to the kernel (one real
//! implementation over `nft -j`, one fake in tests); [`Reconciler`] holds the
//! logic: read, compare, change only when different.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use nftables::schema::{NfListObject, Nftables};
use serde_json::Value;

use crate::exec;
use crate::ruleset::{self, FAMILY, TABLE};

const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables table ip {TABLE}: {0}")]
    Exec(#[from] exec::ExecError),
    #[error("nftables table ip {TABLE}: cannot parse `nft -j` output: {0}")]
    Parse(String),
}

/// The kernel side: list natron's table, apply or check a batch.
#[async_trait]
pub trait Nft: Send + Sync {
    /// The table's objects as `nft -j` lists them, or None when it is absent.
    async fn list_table(&self) -> Result<Option<Vec<Value>>, NftError>;
    /// Commits one batch atomically.
    async fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError>;
    /// Asks the kernel to validate a batch without committing it.
    async fn check(&self, batch: &Nftables<'_>) -> Result<(), NftError>;
}

/// `nft` run as a process, speaking JSON.
pub struct NftCli {
    pub program: String,
}

impl Default for NftCli {
    fn default() -> Self {
        NftCli {
            program: "nft".into(),
        }
    }
}

impl NftCli {
    async fn feed(&self, batch: &Nftables<'_>, check: bool) -> Result<(), NftError> {
        let json = batch_json(batch)?;
        let args: &[&str] = if check {
            &["-c", "-j", "-f", "-"]
        } else {
            &["-j", "-f", "-"]
        };
        exec::run(&self.program, args, Some(json.as_bytes()), NFT_TIMEOUT).await?;
        Ok(())
    }
}

#[async_trait]
impl Nft for NftCli {
    async fn list_table(&self) -> Result<Option<Vec<Value>>, NftError> {
        let family = family_name();
        match exec::run(
            &self.program,
            &["-j", "list", "table", &family, TABLE],
            None,
            NFT_TIMEOUT,
        )
        .await
        {
            Ok(out) => parse_listing(&out).map(Some),
            Err(exec::ExecError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        self.feed(batch, false).await
    }

    async fn check(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        self.feed(batch, true).await
    }
}

fn family_name() -> String {
    serde_json::to_value(FAMILY)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "ip".into())
}

/// A batch as `nft -j -f` reads it. The nftables crate (0.6) writes the
/// `notrack` statement as the bare string "notrack", which nft refuses
/// ("expected object"); nft reads and lists it as `{"notrack": null}`.
pub fn batch_json(batch: &Nftables<'_>) -> Result<String, NftError> {
    let mut v = serde_json::to_value(batch).map_err(|e| NftError::Parse(e.to_string()))?;
    canonical_statements(&mut v);
    Ok(v.to_string())
}

/// Rewrites statements the crate and nft spell differently into nft's
/// spelling, inside every rule's `expr` list.
fn canonical_statements(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if let (true, Value::Array(statements)) = (key == "expr", &mut *value) {
                    for st in statements.iter_mut() {
                        if st.as_str() == Some("notrack") {
                            *st = serde_json::json!({ "notrack": null });
                        }
                    }
                }
                canonical_statements(value);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(canonical_statements),
        _ => {}
    }
}

/// Parses `nft -j list` output into its objects, without the metainfo.
pub fn parse_listing(out: &str) -> Result<Vec<Value>, NftError> {
    let doc: Value = serde_json::from_str(out).map_err(|e| NftError::Parse(e.to_string()))?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| NftError::Parse("no `nftables` array".into()))?;
    Ok(items
        .iter()
        .filter(|o| o.get("metainfo").is_none())
        .cloned()
        .collect())
}

/// The comparable form of a table's objects: handles dropped and counter
/// values zeroed, since both change without the ruleset changing; a
/// one-element `flags` list written as its element, as nft lists it.
pub fn normalize(objects: &[Value]) -> Vec<Value> {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("handle");
                if let Some(Value::Array(flags)) = map.get("flags") {
                    if let [one] = flags.as_slice() {
                        let one = one.clone();
                        map.insert("flags".into(), one);
                    }
                }
                if let Some(Value::Object(c)) = map.get_mut("counter") {
                    if c.contains_key("packets") {
                        c.insert("packets".into(), 0.into());
                        c.insert("bytes".into(), 0.into());
                    }
                }
                map.values_mut().for_each(walk);
            }
            Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut out = objects.to_vec();
    out.iter_mut().for_each(walk);
    out.iter_mut().for_each(canonical_statements);
    out
}

/// The table's structure: each object's kind and name, and for rules their
/// chain and comment, in order.
fn skeleton(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let (kind, body) = o.as_object()?.iter().next()?;
            let name = match kind.as_str() {
                "rule" => format!(
                    "{}/{}",
                    body.get("chain")
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                    body.get("comment")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ),
                _ => body
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            };
            Some((kind.clone(), name))
        })
        .collect()
}

/// Packet and byte counts per rule, keyed by the rule's comment.
pub fn rule_counters(objects: &[Value]) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for obj in objects {
        let Some(rule) = obj.get("rule") else {
            continue;
        };
        let Some(name) = rule.get("comment").and_then(Value::as_str) else {
            continue;
        };
        let counter = rule
            .get("expr")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|stmt| stmt.get("counter"));
        if let Some(c) = counter {
            let get = |k: &str| c.get(k).and_then(Value::as_u64).unwrap_or(0);
            out.insert(name.to_string(), (get("packets"), get("bytes")));
        }
    }
    out
}

/// What one reconcile pass found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pass {
    /// The live table already matched; nothing was written.
    InPlace,
    /// The table was (re)written; the reason says why.
    Applied(&'static str),
}

/// Keeps the live table equal to the desired one.
#[derive(Default)]
pub struct Reconciler {
    /// (desired, live) as normalised right after our last apply. The kernel
    /// may print a rule in another form than we render it; if so the
    /// post-apply listing is what "unchanged" means for that desired ruleset.
    reference: Option<(Vec<Value>, Vec<Value>)>,
    pub counters: BTreeMap<String, (u64, u64)>,
    pub canonical_mismatch: bool,
}

impl Reconciler {
    pub async fn reconcile(
        &mut self,
        nft: &dyn Nft,
        desired: &[NfListObject<'static>],
    ) -> Result<Pass, NftError> {
        let want = normalize(
            &serde_json::to_value(desired)
                .map_err(|e| NftError::Parse(e.to_string()))?
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        let live = nft.list_table().await?;
        let reason = match &live {
            None => "table absent",
            Some(objects) => {
                let have = normalize(objects);
                let same_as_applied =
                    matches!(&self.reference, Some((d, l)) if *d == want && *l == have);
                if have == want || same_as_applied {
                    self.counters = rule_counters(objects);
                    return Ok(Pass::InPlace);
                }
                "table differs from the desired ruleset"
            }
        };
        nft.apply(&ruleset::apply_batch(desired)).await?;
        let after = nft.list_table().await?.unwrap_or_default();
        let have = normalize(&after);
        self.canonical_mismatch = have != want;
        self.counters = rule_counters(&after);
        // The post-write listing may stand for "unchanged" only when it has
        // the desired structure: a difference of notation is acceptable, a
        // missing or extra rule (someone edited the table between our write
        // and our read) is not, and is repaired on the next pass.
        self.reference = (skeleton(&have) == skeleton(&want)).then_some((want, have));
        Ok(Pass::Applied(reason))
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use std::sync::Mutex;

    /// An in-memory kernel: applying a batch stores its `add` objects as the
    /// table, exactly as rendered.
    #[derive(Default)]
    pub struct FakeNft {
        pub table: Mutex<Option<Vec<Value>>>,
        pub applies: Mutex<usize>,
        /// Rules someone removes right after the next apply (a race).
        pub tamper_after_apply: Mutex<usize>,
    }

    #[async_trait]
    impl Nft for FakeNft {
        async fn list_table(&self) -> Result<Option<Vec<Value>>, NftError> {
            Ok(self.table.lock().unwrap().clone())
        }
        async fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
            let v = serde_json::to_value(batch).unwrap();
            let adds: Vec<Value> = v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .skip(2)
                .map(|c| c["add"].clone())
                .collect();
            let mut adds = adds;
            let tamper = std::mem::take(&mut *self.tamper_after_apply.lock().unwrap());
            adds.truncate(adds.len() - tamper);
            *self.table.lock().unwrap() = Some(adds);
            *self.applies.lock().unwrap() += 1;
            Ok(())
        }
        async fn check(&self, _batch: &Nftables<'_>) -> Result<(), NftError> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeNft;
    use super::*;
    use crate::ruleset::{render, RulesetSpec};

    fn desired() -> Vec<NfListObject<'static>> {
        render(&RulesetSpec {
            egress: "eth0".into(),
            sources: vec!["10.0.0.0/16".parse().unwrap()],
            port_range: (1024, 65535),
            fully_random: false,
            flowtable: false,
            agent_port: 9100,
        })
    }

    #[test]
    fn notrack_is_written_and_compared_in_nfts_spelling() {
        let json = batch_json(&ruleset::apply_batch(&desired())).unwrap();
        assert_eq!(json.matches(r#"{"notrack":null}"#).count(), 3, "{json}");
        assert!(!json.contains(r#""notrack"]"#), "{json}");
        // The crate's spelling (rendered) and nft's (listed) compare equal.
        let rendered = serde_json::to_value(desired()).unwrap();
        let listed: Vec<Value> = serde_json::from_str(&json)
            .map(|v: Value| {
                v["nftables"].as_array().unwrap()[2..]
                    .iter()
                    .map(|cmd| cmd["add"].clone())
                    .collect()
            })
            .unwrap();
        assert_eq!(normalize(&listed), normalize(rendered.as_array().unwrap()));
        assert_ne!(&listed, rendered.as_array().unwrap());
    }

    #[tokio::test]
    async fn applies_when_absent_then_leaves_alone() {
        let nft = FakeNft::default();
        let mut r = Reconciler::default();
        assert_eq!(
            r.reconcile(&nft, &desired()).await.unwrap(),
            Pass::Applied("table absent")
        );
        assert_eq!(r.reconcile(&nft, &desired()).await.unwrap(), Pass::InPlace);
        assert_eq!(*nft.applies.lock().unwrap(), 1);
        assert!(!r.canonical_mismatch);
    }

    #[tokio::test]
    async fn repairs_an_edited_table_and_ignores_counters_and_handles() {
        let nft = FakeNft::default();
        let mut r = Reconciler::default();
        r.reconcile(&nft, &desired()).await.unwrap();
        // Counters and handles moving is not drift.
        {
            let mut t = nft.table.lock().unwrap();
            let objects = t.as_mut().unwrap();
            for o in objects.iter_mut() {
                if let Some(rule) = o.get_mut("rule") {
                    rule["handle"] = 7.into();
                    for stmt in rule["expr"].as_array_mut().unwrap() {
                        if let Some(c) = stmt.get_mut("counter") {
                            *c = serde_json::json!({"packets": 5, "bytes": 500});
                        }
                    }
                }
            }
        }
        assert_eq!(r.reconcile(&nft, &desired()).await.unwrap(), Pass::InPlace);
        assert_eq!(r.counters.get(ruleset::rule::MASQUERADE), Some(&(5, 500)));
        // Removing a rule is.
        nft.table.lock().unwrap().as_mut().unwrap().pop();
        assert_eq!(
            r.reconcile(&nft, &desired()).await.unwrap(),
            Pass::Applied("table differs from the desired ruleset")
        );
        assert_eq!(*nft.applies.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn an_edit_racing_our_write_is_not_taken_as_the_reference() {
        let nft = FakeNft::default();
        *nft.tamper_after_apply.lock().unwrap() = 1;
        let mut r = Reconciler::default();
        r.reconcile(&nft, &desired()).await.unwrap();
        // The listing right after the write lacked a rule: repaired next pass.
        assert!(matches!(
            r.reconcile(&nft, &desired()).await.unwrap(),
            Pass::Applied(_)
        ));
        assert_eq!(r.reconcile(&nft, &desired()).await.unwrap(), Pass::InPlace);
        assert_eq!(*nft.applies.lock().unwrap(), 2);
    }

    #[test]
    fn structure_ignores_notation_but_not_missing_rules() {
        let want = normalize(serde_json::to_value(desired()).unwrap().as_array().unwrap());
        let mut notation = want.clone();
        let rule = notation
            .iter_mut()
            .find(|o| o.get("rule").is_some())
            .unwrap();
        rule["rule"]["expr"][0] =
            serde_json::json!({"match": {"op": "==", "left": "x", "right": "y"}});
        assert_ne!(notation, want);
        assert_eq!(skeleton(&notation), skeleton(&want));
        let mut missing = want.clone();
        missing.pop();
        assert_ne!(skeleton(&missing), skeleton(&want));
    }

    #[test]
    fn listing_parse_drops_metainfo() {
        let out = r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"ip","name":"natron","handle":3}}]}"#;
        let objs = parse_listing(out).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(
            normalize(&objs)[0],
            serde_json::json!({"table":{"family":"ip","name":"natron"}})
        );
    }
}
