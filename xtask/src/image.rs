//! `cargo xtask image --arch x86_64|arm64`: the agent as a static (musl)
//! binary, then the disk image with mkosi (image/), into target/image/<arch>/.
//! Installs what it needs first. See docs/image.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{installed, root, run};

/// Host packages for building (bookworm).
const BUILD_PACKAGES: &[&str] = &[
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "fdisk",
    "kmod",
    "cpio",
    "zstd",
    "grub-pc-bin",
    "grub-common",
    "musl-tools",
    "debian-archive-keyring",
    "ovmf",
    // The boot test's per-connection guest forwards.
    "socat",
];
/// From bookworm-backports: mkosi 14 in bookworm cannot build offline.
const BACKPORTS_PACKAGES: &[&str] = &["mkosi", "systemd-boot", "python3-pefile", "qemu-system-x86"];
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/natron-backports.sources";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

impl Arch {
    pub fn parse(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!("--arch {s}: expected x86_64 or arm64")),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
    fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-musl",
            Arch::Arm64 => "aarch64-unknown-linux-musl",
        }
    }
    fn mkosi(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86-64",
            Arch::Arm64 => "arm64",
        }
    }
}

/// Where `cargo xtask image` puts an architecture's image.
pub fn output_dir(arch: Arch) -> PathBuf {
    root().join("target/image").join(arch.name())
}

pub fn image_path(arch: Arch) -> PathBuf {
    output_dir(arch).join(format!("natron-{}.raw", arch.name()))
}

pub fn prerequisites(arch: Arch) -> Result<(), String> {
    if arch == Arch::Arm64 {
        return Err(
            "arm64 images are not built yet: the agent needs an aarch64 musl C cross compiler \
             for aws-lc-sys, and the build qemu-user binfmt (docs/image.md)"
                .into(),
        );
    }
    if !Path::new(BACKPORTS_SOURCE).exists() {
        std::fs::write(
            BACKPORTS_SOURCE,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .map_err(|e| format!("{BACKPORTS_SOURCE}: {e}"))?;
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let missing_bpo: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if !missing.is_empty() || !missing_bpo.is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    if !missing.is_empty() {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    if !missing_bpo.is_empty() {
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "-t", "bookworm-backports"])
            .args(&missing_bpo)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("rustup: {e}"))?;
    if !String::from_utf8_lossy(&targets.stdout).contains(arch.rust_target()) {
        run(Command::new("rustup").args(["target", "add", arch.rust_target()]))?;
    }
    Ok(())
}

/// Builds the image; returns its path.
pub fn build(arch: Arch) -> Result<PathBuf, String> {
    prerequisites(arch)?;
    let start = Instant::now();
    // The agent, static: the image carries no Rust runtime dependencies.
    run(crate::cargo().args([
        "build",
        "--release",
        "--quiet",
        "--target",
        arch.rust_target(),
        "-p",
        "natron-agent",
    ]))?;
    let agent = root()
        .join("target")
        .join(arch.rust_target())
        .join("release/natron-agent");
    let agent_secs = start.elapsed().as_secs_f64();

    // What the build adds to image/mkosi.extra: the agent and its unit.
    let out = output_dir(arch);
    let extra = out.join("extra");
    let _ = std::fs::remove_dir_all(&extra);
    let copy = |from: &Path, to: &str, mode: u32| -> Result<(), String> {
        let dest = extra.join(to);
        std::fs::create_dir_all(dest.parent().expect("parent"))
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        std::fs::copy(from, &dest)
            .map_err(|e| format!("{} → {}: {e}", from.display(), dest.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("{}: {e}", dest.display()))
    };
    copy(&agent, "usr/bin/natron-agent", 0o755)?;
    copy(
        &root().join("agent/natron-agent.service"),
        "usr/lib/systemd/system/natron-agent.service",
        0o644,
    )?;

    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cache = PathBuf::from(home).join(".cache/natron/mkosi-packages");
    // mkosi refuses a workspace inside the project.
    let workspace = std::env::temp_dir().join("natron-mkosi");
    for d in [&cache, &workspace, &out] {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let name = format!("natron-{}", arch.name());
    let mkosi_start = Instant::now();
    run(Command::new("mkosi")
        .current_dir(root().join("image"))
        .arg(format!("--architecture={}", arch.mkosi()))
        .arg(format!("--output={name}"))
        .arg("--output-dir")
        .arg(&out)
        .arg("--workspace-dir")
        .arg(&workspace)
        .arg("--package-cache-dir")
        .arg(&cache)
        .arg("--extra-tree")
        .arg(&extra)
        .args(["--force", "build"]))?;
    let image = image_path(arch);
    let produced = out.join(&name);
    if produced.exists() && !image.exists() {
        std::fs::rename(&produced, &image).map_err(|e| format!("{}: {e}", produced.display()))?;
    }
    println!(
        "image: {} (agent build {agent_secs:.0} s, mkosi {:.0} s; packages in {name}.manifest)",
        image.display(),
        mkosi_start.elapsed().as_secs_f64()
    );
    Ok(image)
}
