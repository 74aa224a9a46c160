//! What the agent remembers across its own restarts, in a file under its
//! runtime directory (`/run/natron`, tmpfs: kept across agent restarts,
//! gone at reboot): the last egress verdict, so that a restarted agent on a
//! NAT that never stopped forwarding is ready at once instead of proving
//! its egress again while its peers wait.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The last egress verdict, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressMemo {
    pub instance_id: String,
    pub healthy: bool,
    pub unix_ms: u64,
}

pub fn egress_path(dir: &Path) -> PathBuf {
    dir.join("egress.json")
}

/// The memo, if there is a readable one.
pub fn read(path: &Path) -> Option<EgressMemo> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Writes the memo through a temporary file and a rename, so a reader never
/// sees half of it.
pub fn write(path: &Path, memo: &EgressMemo) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(memo).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_memo_round_trips_and_a_missing_one_is_none() {
        let dir = std::env::temp_dir().join(format!("natron-memo-{}", std::process::id()));
        let path = egress_path(&dir);
        assert_eq!(read(&path), None);
        let memo = EgressMemo {
            instance_id: "i-1".into(),
            healthy: true,
            unix_ms: 42,
        };
        write(&path, &memo).unwrap();
        assert_eq!(read(&path), Some(memo));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
