//! The ruleset step: keeps natron's live table equal to the rendered one.
//! Read, compare, and replace the whole table atomically only when they
//! differ (invariant 1 and 2 of ARCHITECTURE.md).

use std::collections::BTreeMap;

use nftables::schema::NfListObject;
use serde_json::Value;

use crate::core::listing::{first_difference, normalize, rule_counters, skeleton, ListingError};
use crate::core::ruleset;
use crate::edge::nft::{Nft, NftError};

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
    /// After our last write: where the kernel's listing first differs from
    /// the render (None: it lists the table exactly as rendered).
    pub canonical_mismatch: Option<String>,
    /// Every family of natron's tables has been listed once.
    swept: bool,
}

impl Reconciler {
    pub async fn reconcile(
        &mut self,
        nft: &dyn Nft,
        desired: &[NfListObject<'static>],
    ) -> Result<Pass, NftError> {
        let want = normalize(
            &serde_json::to_value(desired)
                .map_err(|e| NftError::Listing(ListingError(e.to_string())))?
                .as_array()
                .cloned()
                .unwrap_or_default(),
        );
        // `netdev natron` and `ip6 natron` are listed only when wanted,
        // except on the first pass: a table a previous configuration left
        // (the settings change only across restarts) is then seen, and the
        // rewrite that follows removes it.
        let also: Vec<_> = if self.swept {
            desired
                .iter()
                .filter_map(|o| match o {
                    NfListObject::Table(t) if t.family != ruleset::FAMILY => Some(t.family),
                    _ => None,
                })
                .collect()
        } else {
            self.swept = true;
            vec![ruleset::wire::FAMILY, ruleset::nat64::FAMILY]
        };
        let live = nft.list_table(&also).await?;
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
        let after = nft.list_table(&also).await?.unwrap_or_default();
        let have = normalize(&after);
        self.canonical_mismatch = first_difference(&want, &have);
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
mod tests {
    use super::*;
    use crate::core::ruleset::render;
    use crate::edge::nft::fake::FakeNft;

    fn desired() -> Vec<NfListObject<'static>> {
        render(&crate::core::ruleset::tests::spec())
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
        assert_eq!(r.canonical_mismatch, None);
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
}
