//! The data plane on the image's kernel: the same four-namespace topology
//! as the host's data-plane part, built inside natron's image booted under
//! QEMU (TCG), where the kernel has the flowtable fast path the host lacks.
//!
//! The image's own kernel, initrd and root filesystem boot directly
//! (`-kernel`) with a command line that masks natron's units and runs one
//! job (`systemd.run=`): `natron-lab guest-bench` from a read-only data disk
//! that carries this very binary and the host's iperf3, iptables,
//! sysctl and tayga with their libraries (the image ships none of them). The guest
//! prints its report between markers on the serial console and powers
//! off. TCG makes every absolute figure small; the ratios, taken within
//! one round on one kernel, are what compares.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use natron_lab::exec;
use natron_lab::vm::{Arch, DirectBoot, Firmware, Machine, Nic};

/// Where the data disk is mounted in the guest.
const MOUNT: &str = "/run/natron-bench";
const LABEL: &str = "natron-bench";
const BEGIN: &str = "NATRON-BENCH-BEGIN";
const END: &str = "NATRON-BENCH-END";
/// The longest a guest bench may run before it counts as hung.
const LIMIT: Duration = Duration::from_secs(45 * 60);

/// Host programs the topology runs inside the guest: (name in the guest's
/// PATH, host binary, first argument a multi-call binary wants).
const TOOLS: [(&str, &str, Option<&str>); 3] = [
    ("iperf3", "/usr/bin/iperf3", None),
    ("sysctl", "/usr/sbin/sysctl", None),
    ("iptables", "/usr/sbin/xtables-nft-multi", Some("iptables")),
];
/// iptables' extensions (MASQUERADE among them).
const XTABLES: &str = "/usr/lib/x86_64-linux-gnu/xtables";

pub fn run(image: &Path, rounds: usize, secs: u32) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("natron-guest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tools = dir.join("tools");
    data_disk_tree(&tools, rounds, secs)?;
    let disk = dir.join("tools.img");
    let (tree, out) = (tools.display().to_string(), disk.display().to_string());
    exec::run(
        "mkfs.ext4",
        &["-q", "-F", "-L", LABEL, "-d", &tree, &out, "1G"],
    )
    .map_err(|e| e.to_string())?;

    let machine = Machine::create(image, Arch::X86_64, Firmware::Bios, &dir.join("vm"), "4G")
        .map_err(|e| e.to_string())?;
    let direct = DirectBoot {
        kernel: image.with_extension("vmlinuz"),
        initrd: image.with_extension("initrd"),
        append: [
            "console=ttyS0,115200n8",
            "root=PARTLABEL=root-x86-64",
            "rw",
            "net.ifnames=0",
            "systemd.mask=natron-agent.service",
            "systemd.mask=natron-handoff.service",
            &format!("systemd.mount-extra=LABEL={LABEL}:{MOUNT}:ext4:ro"),
            &format!("systemd.run={MOUNT}/run.sh"),
            "systemd.run_success_action=poweroff",
            "systemd.run_failure_action=poweroff",
        ]
        .join(" "),
        data: Some(disk),
    };
    for file in [&direct.kernel, &direct.initrd] {
        if !file.is_file() {
            return Err(format!(
                "{}: missing (cargo xtask image writes it beside the image)",
                file.display()
            ));
        }
    }
    let (binary, args) = machine.command_with(&Nic::None, Some(&direct));
    let mut qemu = exec::spawn_on_host(Path::new(binary), &args, &[], &dir.join("qemu.log"))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let status = loop {
        if let Some(status) = qemu.try_wait().map_err(|e| format!("{binary}: {e}"))? {
            break status;
        }
        if started.elapsed() > LIMIT {
            let _ = qemu.kill();
            let _ = qemu.wait();
            return Err(format!(
                "the guest bench ran over {LIMIT:?}\n--- console (end) ---\n{}",
                machine.console_tail(40)
            ));
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let console = machine.console();
    let report = between_markers(&console).ok_or_else(|| {
        format!(
            "QEMU exited ({status}) without a report\n--- console (end) ---\n{}",
            machine.console_tail(60)
        )
    })?;
    let _ = std::fs::remove_dir_all(&dir);
    match report {
        Ok(body) => Ok(format!(
            "Inside the x86_64 image under QEMU TCG (2 vCPUs, 1 GiB), its kernel \
             (Debian's cloud kernel, with flowtables), nftables and Jool; iperf3, \
             iptables, sysctl and TAYGA are the host's, from a data disk. Guest powered off {:.0} s \
             after power-on.\n\n{body}",
            started.elapsed().as_secs_f64()
        )),
        Err(why) => Err(format!("the guest bench failed:\n{why}")),
    }
}

/// The data disk's files: this binary, the host tools with wrappers that
/// point them at their own libraries (only them: the guest's nft must keep
/// its newer ones), iptables' extensions, and the job.
fn data_disk_tree(tools: &Path, rounds: usize, secs: u32) -> Result<(), String> {
    let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()));
    let (bin, host, lib) = (tools.join("bin"), tools.join("host"), tools.join("lib"));
    for d in [&bin, &host, &lib] {
        mkdir(d)?;
    }
    let copy = |from: &Path, to: &Path| {
        std::fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
    };
    let me = std::env::current_exe().map_err(|e| format!("natron-lab's own path: {e}"))?;
    copy(&me, &bin.join("natron-lab"))?;
    // NAT64's userspace alternative to Jool, measured beside it (unpacked
    // by `cargo xtask setup`, see `dataplane::tayga_program`).
    let tayga = natron_lab::dataplane::tayga_program();
    let tayga = on_path(&tayga)
        .ok_or_else(|| {
            format!(
                "{}: not found (`cargo xtask setup` unpacks it)",
                tayga.display()
            )
        })?
        .display()
        .to_string();
    let programs = TOOLS.into_iter().chain([("tayga", tayga.as_str(), None)]);
    for (name, path, first) in programs {
        let path = Path::new(path);
        let file = path
            .file_name()
            .expect("a file")
            .to_string_lossy()
            .to_string();
        copy(path, &host.join(&file))?;
        for library in libraries(path)? {
            let name = library.file_name().expect("a file");
            copy(&library, &lib.join(name))?;
        }
        let wrapper = format!(
            "#!/bin/sh\nexport LD_LIBRARY_PATH={MOUNT}/lib XTABLES_LIBDIR={MOUNT}/xtables\n\
             exec {MOUNT}/host/{file} {}\"$@\"\n",
            first.map(|f| format!("{f} ")).unwrap_or_default()
        );
        write_executable(&bin.join(name), &wrapper)?;
    }
    exec::run(
        "cp",
        &["-a", XTABLES, &tools.join("xtables").display().to_string()],
    )
    .map_err(|e| e.to_string())?;
    let job = format!(
        "#!/bin/sh\n\
         # natron's data-plane bench on the image's kernel (started by systemd.run=).\n\
         export PATH={MOUNT}/bin:$PATH\n\
         if natron-lab guest-bench --rounds {rounds} --secs {secs} >/run/report.md 2>/run/progress.log; then\n\
         \ttag=ok\n\
         else\n\
         \ttag=failed; tail -n 40 /run/progress.log >>/run/report.md\n\
         fi\n\
         {{ echo \"{BEGIN} $tag\"; cat /run/report.md; echo \"{END}\"; }} >/dev/ttyS0\n"
    );
    write_executable(&tools.join("run.sh"), &job)
}

/// `program` itself when it names a path, else the first of that name on
/// the PATH.
fn on_path(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn write_executable(path: &Path, text: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The shared libraries `program` loads, as `ldd` resolves them on the
/// host, but the C library's own (the guest's newer glibc serves those).
fn libraries(program: &Path) -> Result<Vec<PathBuf>, String> {
    let out = exec::run("ldd", &[&program.display().to_string()]).map_err(|e| e.to_string())?;
    Ok(parse_ldd(&out))
}

fn parse_ldd(out: &str) -> Vec<PathBuf> {
    const GLIBC: [&str; 7] = [
        "libc.so",
        "libm.so",
        "libpthread.so",
        "libdl.so",
        "librt.so",
        "libresolv.so",
        "ld-linux",
    ];
    out.lines()
        .filter_map(|l| l.split("=>").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|path| path.starts_with('/'))
        .filter(|path| !GLIBC.iter().any(|g| path.contains(g)))
        .map(PathBuf::from)
        .collect()
}

/// The guest's report between the markers: Ok(body) when the job
/// succeeded, Err(its output) when it failed; None without markers.
fn between_markers(console: &str) -> Option<Result<String, String>> {
    let start = console.find(BEGIN)?;
    let rest = &console[start + BEGIN.len()..];
    let (tag, rest) = rest.split_once('\n')?;
    let body = &rest[..rest.find(END)?];
    let body: String = body
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n");
    Some(if tag.trim() == "ok" {
        Ok(body)
    } else {
        Err(body)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_gives_the_libraries_but_glibcs_own() {
        let out = "\tlinux-vdso.so.1 (0x00007f)\n\
                   \tlibiperf.so.0 => /lib/x86_64-linux-gnu/libiperf.so.0 (0x1)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\
                   \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x3)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x4)\n";
        assert_eq!(
            parse_ldd(out),
            vec![PathBuf::from("/lib/x86_64-linux-gnu/libiperf.so.0")]
        );
    }

    #[test]
    fn the_report_is_read_between_the_markers() {
        let console = "[ 1.0] boot\r\nNATRON-BENCH-BEGIN ok\r\n| a |\r\n| b |\r\nNATRON-BENCH-END\r\n[ 9.0] poweroff";
        assert_eq!(between_markers(console), Some(Ok("| a |\n| b |".into())));
        let failed = "NATRON-BENCH-BEGIN failed\nno flowtable\nNATRON-BENCH-END\n";
        assert_eq!(between_markers(failed), Some(Err("no flowtable".into())));
        assert_eq!(between_markers("[ 1.0] boot"), None);
    }
}
