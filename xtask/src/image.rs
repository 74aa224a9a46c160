//! `cargo xtask image --arch x86_64|arm64`: the agent as a static (musl)
//! binary, then the disk image with mkosi (image/), into target/image/<arch>/.
//! Installs what it needs first. See docs/image.md.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{installed, root, run};

/// Whether `package` is installed at `version` or later.
fn installed_at_least(package: &str, version: &str) -> bool {
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    !installed.is_empty()
        && Command::new("dpkg")
            .args(["--compare-versions", &installed, "ge", version])
            .status()
            .is_ok_and(|s| s.success())
}

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
];
/// From bookworm-backports: mkosi 14 in bookworm cannot build offline.
const BACKPORTS_PACKAGES: &[&str] = &["mkosi", "systemd-boot", "python3-pefile", "qemu-system-x86"];
/// For arm64: foreign-architecture maintainer scripts (binfmt), the boot
/// test's firmware and emulator.
const ARM64_PACKAGES: &[&str] = &["qemu-user-static", "qemu-efi-aarch64"];
const ARM64_BACKPORTS_PACKAGES: &[&str] = &["qemu-system-arm"];
/// Installed in bookworm already, but wanted at least at this version from
/// bookworm-backports: mke2fs honours SOURCE_DATE_EPOCH from 1.47.1 on, so
/// two builds give the root filesystem the same times.
const BACKPORTS_UPGRADES: &[(&str, &str)] = &[("e2fsprogs", "1.47.1")];
/// The C cross compiler for the aarch64 agent (aws-lc-sys): zig, from PyPI,
/// driven by cargo-zigbuild, both pinned.
const ZIG_VERSION: &str = "0.13.0";
const ZIGBUILD_VERSION: &str = "0.24.1";
const BACKPORTS_SOURCE: &str = "/etc/apt/sources.list.d/natron-backports.sources";

pub use natron_contract::arch::Arch;

/// Where `cargo xtask image` puts an architecture's image.
pub fn output_dir(arch: Arch) -> PathBuf {
    root().join("target/image").join(arch.name())
}

pub fn image_path(arch: Arch) -> PathBuf {
    output_dir(arch).join(format!("natron-{}.raw", arch.name()))
}

pub fn prerequisites(arch: Arch) -> Result<(), String> {
    if !Path::new(BACKPORTS_SOURCE).exists() {
        std::fs::write(
            BACKPORTS_SOURCE,
            "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\n\
             Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
        )
        .map_err(|e| format!("{BACKPORTS_SOURCE}: {e}"))?;
    }
    let (extra, extra_bpo): (&[&str], &[&str]) = match arch {
        Arch::X86_64 => (&[], &[]),
        Arch::Arm64 => (ARM64_PACKAGES, ARM64_BACKPORTS_PACKAGES),
    };
    let missing: Vec<&str> = BUILD_PACKAGES
        .iter()
        .chain(extra)
        .copied()
        .filter(|p| !installed(p))
        .collect();
    let missing_bpo: Vec<&str> = BACKPORTS_PACKAGES
        .iter()
        .chain(extra_bpo)
        .copied()
        .filter(|p| !installed(p))
        .chain(
            BACKPORTS_UPGRADES
                .iter()
                .filter(|(p, at_least)| !installed_at_least(p, at_least))
                .map(|(p, _)| *p),
        )
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
    if arch == Arch::Arm64 {
        register_binfmt()?;
        zig()?;
    }
    Ok(())
}

/// PID 1 here is not systemd: register qemu-user for aarch64 by hand.
fn register_binfmt() -> Result<(), String> {
    let dir = Path::new("/proc/sys/fs/binfmt_misc");
    if !dir.join("register").exists() {
        run(Command::new("mount")
            .args(["-t", "binfmt_misc", "binfmt_misc"])
            .arg(dir))?;
    }
    if !dir.join("qemu-aarch64").exists() {
        let rule = std::fs::read("/usr/lib/binfmt.d/qemu-aarch64.conf")
            .map_err(|e| format!("/usr/lib/binfmt.d/qemu-aarch64.conf: {e}"))?;
        std::fs::write(dir.join("register"), rule)
            .map_err(|e| format!("{}: {e}", dir.join("register").display()))?;
    }
    Ok(())
}

fn cache() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/natron")
}

/// zig in a venv with a `zig` wrapper in ~/.cache/natron/bin, and
/// cargo-zigbuild.
fn zig() -> Result<(), String> {
    let venv = cache().join(format!("venv-zig-{ZIG_VERSION}"));
    if !venv.join("bin/python").exists() {
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("ziglang=={ZIG_VERSION}")))?;
    }
    let bin = cache().join("bin");
    std::fs::create_dir_all(&bin).map_err(|e| format!("{}: {e}", bin.display()))?;
    let wrapper = bin.join("zig");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec {} -m ziglang \"$@\"\n",
            venv.join("bin/python").display()
        ),
    )
    .map_err(|e| format!("{}: {e}", wrapper.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", wrapper.display()))?;
    let have = Command::new("cargo-zigbuild")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(ZIGBUILD_VERSION))
        .unwrap_or(false);
    if !have {
        run(crate::cargo().args([
            "install",
            "--locked",
            "--quiet",
            "cargo-zigbuild",
            "--version",
            ZIGBUILD_VERSION,
        ]))?;
    }
    Ok(())
}

/// The agent as the image carries it: static (musl), release, stripped.
pub fn build_agent(arch: Arch) -> Result<PathBuf, String> {
    prerequisites(arch)?;
    let mut build = crate::cargo();
    match arch {
        Arch::X86_64 => build.arg("build"),
        Arch::Arm64 => {
            let path = format!(
                "{}:{}",
                cache().join("bin").display(),
                std::env::var("PATH").unwrap_or_default()
            );
            build.env("PATH", path).arg("zigbuild")
        }
    };
    run(build.args([
        "--release",
        "--quiet",
        "--target",
        arch.rust_target(),
        "-p",
        "natron-agent",
    ]))?;
    Ok(root()
        .join("target")
        .join(arch.rust_target())
        .join("release/natron-agent"))
}

/// Builds the image; returns its path.
pub fn build(arch: Arch) -> Result<PathBuf, String> {
    let start = Instant::now();
    let agent = build_agent(arch)?;
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
    for unit in ["natron-agent.service", "natron-handoff.service"] {
        copy(
            &root().join("agent").join(unit),
            &format!("usr/lib/systemd/system/{unit}"),
            0o644,
        )?;
    }

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
