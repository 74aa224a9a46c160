//! The kernel's nftables, through the narrow [`Nft`] trait: list natron's
//! tables, apply or check a batch. One real implementation over `nft -j`
//! (through `exec`), one fake in tests.

use std::time::Duration;

use async_trait::async_trait;
use nftables::schema::Nftables;
use nftables::types::NfFamily;
use serde_json::Value;

use super::exec;
use crate::core::listing::{batch_json, owned_objects, parse_listing};
use crate::core::ruleset::{FAMILY, TABLE};

const NFT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables tables ip, netdev and ip6 {TABLE}: {0}")]
    Exec(#[from] exec::ExecError),
    #[error("nftables tables ip, netdev and ip6 {TABLE}: {0}")]
    Listing(#[from] crate::core::listing::ListingError),
}

/// The kernel side: list natron's table, apply or check a batch.
#[async_trait]
pub trait Nft: Send + Sync {
    /// The objects of `ip natron`, and those of natron's tables of the
    /// `also` families (`netdev`: the wire counters; `ip6`: NAT64) when
    /// present, as `nft -j` lists them; None when `ip natron` is absent.
    /// (A family not asked for is not looked for, and with none the
    /// listing is of `ip natron` alone, the cheapest nft run: a rewrite
    /// removes a stale table of another family.)
    async fn list_table(&self, also: &[NfFamily]) -> Result<Option<Vec<Value>>, NftError>;
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
    /// Table `family` natron, or None when it is absent.
    async fn list(&self, family: &str) -> Result<Option<Vec<Value>>, NftError> {
        match exec::run(
            &self.program,
            &["-j", "list", "table", family, TABLE],
            None,
            NFT_TIMEOUT,
        )
        .await
        {
            Ok(out) => Ok(Some(parse_listing(&out)?)),
            Err(exec::ExecError::Failed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

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
    async fn list_table(&self, also: &[NfFamily]) -> Result<Option<Vec<Value>>, NftError> {
        if also.is_empty() {
            return self.list(family_name(FAMILY)).await;
        }
        // Every table in one nft run (the ruleset, kept to natron's tables)
        // rather than one run each: a run costs about 3 ms of a core, and
        // this runs every pass.
        let out = exec::run(&self.program, &["-j", "list", "ruleset"], None, NFT_TIMEOUT).await?;
        let mut families = vec![family_name(FAMILY)];
        families.extend(also.iter().map(|f| family_name(*f)));
        Ok(owned_objects(&parse_listing(&out)?, TABLE, &families))
    }

    async fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        self.feed(batch, false).await
    }

    async fn check(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
        self.feed(batch, true).await
    }
}

/// nft's name of a family natron has a table in.
fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::NetDev => "netdev",
        NfFamily::IP6 => "ip6",
        _ => "ip",
    }
}

#[cfg(test)]
pub mod fake {
    use super::*;
    use nftables::schema::Nftables;
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
        async fn list_table(&self, _also: &[NfFamily]) -> Result<Option<Vec<Value>>, NftError> {
            Ok(self.table.lock().unwrap().clone())
        }
        async fn apply(&self, batch: &Nftables<'_>) -> Result<(), NftError> {
            let v = serde_json::to_value(batch).unwrap();
            let adds: Vec<Value> = v["nftables"]
                .as_array()
                .unwrap()
                .iter()
                // The three tables' add and delete.
                .skip(6)
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
