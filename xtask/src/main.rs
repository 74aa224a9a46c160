//! `cargo xtask`: the project's own commands, runnable on a fresh Debian 12
//! machine as root. Each installs what it needs first (idempotently, so
//! repeat runs are fast).
//!
//!   cargo xtask setup   apt packages and the pinned EC2 emulator venv
//!   cargo xtask demo    setup, build, run the lab demo
//!   cargo xtask test    setup, build, run every test, build the images and
//!                       boot them under QEMU: x86_64 UEFI and BIOS, arm64
//!                       UEFI (what CI runs)
//!   cargo xtask bench   setup, build (the release agent too), run every
//!                       benchmark, print them and update BENCHMARKS.md
//!   cargo xtask image --arch x86_64   the disk image (image/), into target/image/

mod image;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

/// Debian packages the lab and the agent need at run time, and the tools
/// the data-plane bench and its test drive (iperf3, fck-nat's
/// iptables(-nft), conntrack).
const APT_PACKAGES: &[&str] = &[
    "nftables",
    "iproute2",
    "procps",
    "ca-certificates",
    "iperf3",
    "iptables",
    "conntrack",
    // The VPC's DHCP server for the lab's VM NAT; link offloads off where
    // its tests count wire packets.
    "dnsmasq-base",
    "ethtool",
    // ping and traceroute6 through NAT64 (the VM NAT's tests).
    "iputils-ping",
    "traceroute",
];
/// Must match `natron_lab::emulator::MOTO_VERSION`.
const MOTO_VERSION: &str = "5.2.5";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("demo") => setup().and_then(|_| demo()),
        Some("test") => setup().and_then(|_| test(&args[1..])),
        Some("bench") => setup().and_then(|_| bench(&args[1..])),
        Some("image") => image_arch(&args[1..]).and_then(|arch| image::build(arch).map(|_| ())),
        _ => {
            eprintln!("usage: cargo xtask <setup|demo|test [cargo test args]|bench [natron-lab bench options]|image [--arch x86_64|arm64]>");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn image_arch(args: &[String]) -> Result<image::Arch, String> {
    match args {
        [] => Ok(image::Arch::X86_64),
        [flag, arch] if flag == "--arch" => arch.parse(),
        _ => Err(format!("image {args:?}: expected [--arch x86_64|arm64]")),
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn run(cmd: &mut Command) -> Result<(), String> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.status().map_err(|e| format!("{cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {status}"))
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn venv_dir() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(format!(".cache/natron/venv-moto-{MOTO_VERSION}"))
}

fn setup() -> Result<(), String> {
    if !nix_is_root() {
        return Err("run as root: the lab creates network namespaces".into());
    }
    apt_install(APT_PACKAGES)?;
    // The emulator, every Python package pinned, in a venv kept across runs.
    let requirements = root().join("tests/moto-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let venv = venv_dir();
    let stamp = venv.join("natron-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(wanted.as_str()) {
        let _ = std::fs::remove_dir_all(&venv);
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
            .arg(&requirements))?;
        std::fs::write(&stamp, &wanted).map_err(|e| format!("{}: {e}", stamp.display()))?;
    }
    std::env::set_var("NATRON_MOTO_SERVER", venv.join("bin/moto_server"));
    std::env::set_var("NATRON_TAYGA", tayga()?);
    Ok(())
}

/// TAYGA, NAT64's userspace translator, which the data-plane bench
/// measures beside Jool: Debian's package unpacked into the cache, never
/// installed, since its maintainer scripts would start it on this machine
/// (a TUN device, routes and a NAT44 rule of its own).
fn tayga() -> Result<PathBuf, String> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let dir = PathBuf::from(home).join(".cache/natron/tayga");
    let bin = dir.join("usr/sbin/tayga");
    if bin.is_file() {
        return Ok(bin);
    }
    let download = dir.with_extension("download");
    let _ = std::fs::remove_dir_all(&download);
    std::fs::create_dir_all(&download).map_err(|e| format!("{}: {e}", download.display()))?;
    let fetch = || {
        run(Command::new("apt-get")
            .args(["download", "-qq", "tayga"])
            .current_dir(&download))
    };
    // The package lists may not be there yet on a fresh machine.
    if fetch().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        fetch()?;
    }
    let deb = std::fs::read_dir(&download)
        .map_err(|e| format!("{}: {e}", download.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| {
            format!(
                "{}: apt-get download tayga left no .deb",
                download.display()
            )
        })?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = std::fs::remove_dir_all(&download);
    bin.is_file()
        .then_some(bin.clone())
        .ok_or_else(|| format!("{}: not in the tayga package", bin.display()))
}

/// Installs the packages not installed yet.
fn apt_install(packages: &[&str]) -> Result<(), String> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    Ok(())
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// cargo, with the environment `cargo run` gave this process removed: a
/// build script that tracks one of these (ring tracks CARGO_MANIFEST_DIR)
/// would otherwise see a change between `cargo xtask` and plain `cargo`
/// and rebuild half the dependency tree each time one follows the other.
fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || matches!(
                key.as_ref(),
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "LD_LIBRARY_PATH"
            )
        {
            c.env_remove(key.as_ref());
        }
    }
    c
}

fn demo() -> Result<(), String> {
    run(cargo().args(["build", "--quiet", "-p", "natron-agent", "-p", "natron-lab"]))?;
    run(Command::new(root().join("target/debug/natron-lab")).arg("demo"))
}

fn bench(extra: &[String]) -> Result<(), String> {
    // The figures are for the binary users run: static, release.
    let arch = image::Arch::host();
    let agent = image::build_agent(arch)?;
    // The data plane on the image's own kernel needs the image.
    let img = image::build(image::Arch::X86_64)?;
    run(cargo().args(["build", "--quiet", "-p", "natron-agent", "-p", "natron-lab"]))?;
    run(Command::new(root().join("target/debug/natron-lab"))
        .arg("bench")
        .arg("--release-binary")
        .arg(&agent)
        .arg("--image")
        .arg(&img)
        .arg("--write")
        .arg(root().join("BENCHMARKS.md"))
        .args(extra))
}

fn test(extra: &[String]) -> Result<(), String> {
    // The lab tests run the agent binary: build it (and everything) first.
    run(cargo().args(["build", "--workspace", "--all-targets"]))?;
    // Every test binary runs even after one fails: a red run then says
    // everything that is wrong, not only the first binary's failures.
    let (mut passed, mut failed) = cargo_test(
        cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .args(extra),
    )?;
    // The images: built, then booted under QEMU (x86_64 with each
    // firmware, arm64 with UEFI as on Graviton).
    let mut boots: Result<Vec<bool>, String> = Ok(Vec::new());
    for (arch, firmwares) in [
        (image::Arch::X86_64, &["uefi", "bios"][..]),
        (image::Arch::Arm64, &["uefi"][..]),
    ] {
        let Ok(results) = &mut boots else { break };
        match image::build(arch) {
            Ok(img) => {
                for firmware in firmwares {
                    results.push(
                        run(Command::new(root().join("target/debug/natron-lab"))
                            .args(["boot-test", "--arch", arch.name(), "--image"])
                            .arg(&img)
                            .args(["--firmware", firmware]))
                        .is_ok(),
                    );
                }
                if arch == image::Arch::X86_64 {
                    // The image as one of the lab's NAT instances, one VM
                    // at a time (TCG on two cores).
                    let (p, f) = cargo_test(
                        cargo()
                            .args(["test", "--workspace", "--test", "vm_nat"])
                            .args(["--test", "vm_nat64", "--"])
                            .args(["--ignored", "--test-threads=1"])
                            .env("NATRON_IMAGE", &img),
                    )?;
                    passed += p;
                    failed += f;
                }
            }
            Err(e) => boots = Err(e),
        }
    }
    match &boots {
        Ok(results) => {
            for ok in results {
                if *ok {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        Err(e) => {
            eprintln!("xtask: image build failed: {e}");
            failed += 1;
        }
    }
    // One closing line over all test binaries (cargo's last one is often a
    // doc-test run with nothing in it).
    println!("tests: {passed} passed, {failed} failed");
    if failed == 0 {
        Ok(())
    } else {
        Err(format!("{failed} tests failed"))
    }
}

/// Runs a `cargo test` command, echoing its output: (passed, failed) over
/// its test binaries, a failed run that reported no failing test (a build
/// error, a crashed binary) counting as one failure.
fn cargo_test(cmd: &mut Command) -> Result<(u64, u64), String> {
    cmd.stdout(std::process::Stdio::piped());
    eprintln!("xtask: $ {cmd:?}");
    let mut child = cmd.spawn().map_err(|e| format!("cargo test: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let stdout = child.stdout.take().expect("piped");
    for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
        let line = line.map_err(|e| format!("cargo test output: {e}"))?;
        println!("{line}");
        if let Some((p, f)) = parse_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() && failed == 0 {
        eprintln!("xtask: {cmd:?}: {status} without a failing test");
        failed = 1;
    }
    Ok((passed, failed))
}

/// (passed, failed) from a libtest line "test result: ok. 5 passed; 0 failed; ...".
fn parse_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let count = |word: &str| {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .trim_start_matches("ok. ")
                    .trim_start_matches("FAILED. ")
                    .strip_suffix(word)
            })
            .and_then(|n| n.trim().parse().ok())
    };
    Some((count(" passed")?, count(" failed")?))
}
