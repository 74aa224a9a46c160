//! natron's disk image as a virtual machine under QEMU with software
//! emulation (TCG; KVM is unusable here): the one place QEMU's command line
//! is built. The boot test runs it on QEMU's user network; the lab runs it
//! as one of its NAT instances, on a TAP device inside the NAT's namespace.
//!
//! The machine is a Nitro-like instance: an NVMe volume over the image
//! (bigger than the image, as an EBS volume is bigger than its snapshot),
//! a virtio NIC (ENA's stand-in), 1 GiB, two vCPUs, UEFI or BIOS firmware,
//! the console on the first serial port.

use std::path::{Path, PathBuf};

use crate::{exec, LabError};

pub use natron_contract::arch::Arch;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    Uefi,
    Bios,
}

impl std::str::FromStr for Firmware {
    type Err = String;
    fn from_str(s: &str) -> Result<Firmware, String> {
        match s {
            "uefi" => Ok(Firmware::Uefi),
            "bios" => Ok(Firmware::Bios),
            _ => Err(format!("firmware {s:?}: expected uefi or bios")),
        }
    }
}

/// The machine's network interface.
pub enum Nic {
    /// QEMU's user network: the options after `user,id=n0,` (its address
    /// range, `restrict=on`, guest and host forwards).
    User(String),
    /// A TAP device that already exists in the namespace QEMU runs in, with
    /// the ENI's MAC address and MTU (EC2's 9,001).
    Tap {
        ifname: String,
        mac: String,
        mtu: u16,
    },
    /// No network at all (a guest that only talks to itself).
    None,
}

/// The image's kernel booted directly (QEMU's `-kernel`, BIOS), with the
/// image's own initrd and this command line, instead of through its boot
/// loader: how a guest is given a job of its own (`systemd.run=`).
pub struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    /// A raw disk image attached read-only beside the volume.
    pub data: Option<PathBuf>,
}

/// A machine's files: its volume, its UEFI variables and serial logs, all
/// under `dir`. They outlive a power-off, so the next boot of the same
/// machine finds its disk as it left it (a stopped and started instance).
pub struct Machine {
    pub arch: Arch,
    pub firmware: Firmware,
    pub dir: PathBuf,
    /// Virtual CPUs (2, as a t4g.nano has; 1 where two guests share the
    /// machine's two cores under TCG).
    pub cpus: u32,
}

impl Machine {
    fn volume(&self) -> PathBuf {
        self.dir.join("volume.qcow2")
    }

    fn vars(&self) -> PathBuf {
        self.dir.join("VARS.fd")
    }

    /// The console (`ttyS0` on x86_64; on arm64 the first of the two, see
    /// [`Machine::command`]). Appended to across boots.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    fn serial_log2(&self) -> PathBuf {
        self.dir.join("serial-ttyS0.log")
    }

    /// Everything the guest printed on its serial ports so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.serial_log()).unwrap_or_default()
            + &std::fs::read_to_string(self.serial_log2()).unwrap_or_default()
    }

    /// The last `n` lines of [`Machine::console`].
    pub fn console_tail(&self, n: usize) -> String {
        let text = self.console();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// A fresh machine over `image`: a `size` qcow2 volume backed by the raw
    /// image (which stays untouched) and, for UEFI, a copy of the
    /// firmware's variable store. Removes what a previous machine left in
    /// `dir`.
    pub fn create(
        image: &Path,
        arch: Arch,
        firmware: Firmware,
        dir: &Path,
        size: &str,
    ) -> Result<Machine, LabError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| LabError::Setup(format!("{}: {e}", dir.display())))?;
        let machine = Machine {
            arch,
            firmware,
            dir: dir.to_path_buf(),
            cpus: 2,
        };
        for old in [
            machine.volume(),
            machine.vars(),
            machine.serial_log(),
            machine.serial_log2(),
        ] {
            let _ = std::fs::remove_file(old);
        }
        let backing = image
            .canonicalize()
            .map_err(|e| LabError::Setup(format!("image {}: {e}", image.display())))?;
        let (backing, volume) = (
            backing.display().to_string(),
            machine.volume().display().to_string(),
        );
        exec::run(
            "qemu-img",
            &[
                "create", "-q", "-f", "qcow2", "-F", "raw", "-b", &backing, &volume, size,
            ],
        )?;
        if let Some((_, template)) = machine.firmware_files() {
            std::fs::copy(template, machine.vars()).map_err(|e| {
                LabError::Setup(format!(
                    "{template}: {e} (apt install ovmf qemu-efi-aarch64)"
                ))
            })?;
        }
        Ok(machine)
    }

    /// (code, variable store template) of the UEFI firmware; None for BIOS.
    fn firmware_files(&self) -> Option<(&'static str, &'static str)> {
        match (self.arch, self.firmware) {
            (Arch::X86_64, Firmware::Uefi) => Some((
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            )),
            (Arch::X86_64, Firmware::Bios) => None,
            // Graviton boots UEFI only.
            (Arch::Arm64, _) => Some((
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            )),
        }
    }

    /// The QEMU program and its arguments to power the machine on with
    /// `nic`. The process is the machine: killing it is pulling the plug.
    pub fn command(&self, nic: &Nic) -> (&'static str, Vec<String>) {
        self.command_with(nic, None)
    }

    /// As [`Machine::command`], booting `direct` when given.
    pub fn command_with(
        &self,
        nic: &Nic,
        direct: Option<&DirectBoot>,
    ) -> (&'static str, Vec<String>) {
        let mut args: Vec<String> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(|s| s.to_string()));
        let binary = match self.arch {
            Arch::X86_64 => {
                push(&["-machine", "q35"]);
                "qemu-system-x86_64"
            }
            Arch::Arm64 => {
                push(&["-machine", "virt,gic-version=max", "-cpu", "max"]);
                "qemu-system-aarch64"
            }
        };
        let cpus = self.cpus.to_string();
        push(&["-accel", "tcg", "-m", "1024", "-smp", &cpus]);
        push(&["-display", "none", "-no-reboot", "-nodefaults"]);
        let serial = format!("file,id=s0,append=on,path={}", self.serial_log().display());
        push(&["-chardev", &serial, "-serial", "chardev:s0"]);
        if self.arch == Arch::Arm64 {
            // virt's own UART is ttyAMA0; Graviton's console, which the image
            // names last (so /dev/console, where the journal goes), is
            // ttyS0: a PCI 16550 gives the guest one.
            let serial2 = format!("file,id=s1,append=on,path={}", self.serial_log2().display());
            push(&["-chardev", &serial2, "-device", "pci-serial,chardev=s1"]);
        }
        let drive = format!(
            "if=none,id=disk,format=qcow2,file={}",
            self.volume().display()
        );
        push(&[
            "-drive",
            &drive,
            "-device",
            "nvme,drive=disk,serial=natron-root",
        ]);
        match nic {
            Nic::User(options) => {
                let netdev = format!("user,id=n0,{options}");
                push(&["-netdev", &netdev, "-device", "virtio-net-pci,netdev=n0"]);
            }
            Nic::Tap { ifname, mac, mtu } => {
                let netdev = format!("tap,id=n0,ifname={ifname},script=no,downscript=no");
                // As ENA: no segmentation offload either way, so the guest
                // receives and sends frames as they are on the wire (and
                // its packet counters count those).
                let device = format!(
                    "virtio-net-pci,netdev=n0,mac={mac},host_mtu={mtu},\
                     host_tso4=off,host_tso6=off,host_ufo=off,host_ecn=off,\
                     guest_tso4=off,guest_tso6=off,guest_ufo=off,guest_ecn=off"
                );
                push(&["-netdev", &netdev, "-device", &device]);
            }
            Nic::None => push(&["-nic", "none"]),
        }
        if let Some(d) = direct {
            let (kernel, initrd) = (
                d.kernel.display().to_string(),
                d.initrd.display().to_string(),
            );
            push(&["-kernel", &kernel, "-initrd", &initrd, "-append", &d.append]);
            if let Some(data) = &d.data {
                let drive = format!(
                    "if=none,id=data,format=raw,readonly=on,file={}",
                    data.display()
                );
                push(&[
                    "-drive",
                    &drive,
                    "-device",
                    "nvme,drive=data,serial=natron-data",
                ]);
            }
        }
        if let Some((code, _)) = self.firmware_files() {
            let code = format!("if=pflash,format=raw,unit=0,readonly=on,file={code}");
            let vars = format!("if=pflash,format=raw,unit=1,file={}", self.vars().display());
            push(&["-drive", &code, "-drive", &vars]);
        }
        (binary, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(arch: Arch, firmware: Firmware) -> Machine {
        Machine {
            arch,
            firmware,
            dir: PathBuf::from("/m"),
            cpus: 2,
        }
    }

    #[test]
    fn a_tap_nic_carries_the_enis_mac_and_mtu() {
        let (binary, args) = machine(Arch::X86_64, Firmware::Uefi).command(&Nic::Tap {
            ifname: "tap0".into(),
            mac: "02:00:00:00:00:01".into(),
            mtu: 9001,
        });
        assert_eq!(binary, "qemu-system-x86_64");
        let line = args.join(" ");
        assert!(line.contains("-netdev tap,id=n0,ifname=tap0,script=no,downscript=no"));
        assert!(line.contains("virtio-net-pci,netdev=n0,mac=02:00:00:00:00:01,host_mtu=9001,"));
        assert!(line.contains("host_tso4=off") && line.contains("guest_tso4=off"));
        assert!(line.contains("-accel tcg"), "never KVM here: {line}");
        assert!(
            line.contains("nvme,drive=disk"),
            "an NVMe volume as on Nitro"
        );
        assert!(line.contains("OVMF_CODE.fd"));
    }

    #[test]
    fn a_direct_boot_passes_the_kernel_its_command_line_and_the_data_disk() {
        let direct = DirectBoot {
            kernel: "/i/k".into(),
            initrd: "/i/r".into(),
            append: "console=ttyS0 systemd.run=/x".into(),
            data: Some("/d/tools.img".into()),
        };
        let (_, args) =
            machine(Arch::X86_64, Firmware::Bios).command_with(&Nic::None, Some(&direct));
        let at = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[at + 1], "console=ttyS0 systemd.run=/x", "one argument");
        let line = args.join(" ");
        assert!(line.contains("-kernel /i/k -initrd /i/r") && line.contains("-nic none"));
        assert!(line.contains("readonly=on,file=/d/tools.img"));
    }

    #[test]
    fn bios_has_no_pflash_and_arm64_gets_a_pci_serial_port() {
        let (_, bios) = machine(Arch::X86_64, Firmware::Bios).command(&Nic::User("x".into()));
        assert!(!bios.join(" ").contains("pflash"));
        let (binary, arm) = machine(Arch::Arm64, Firmware::Uefi).command(&Nic::User("x".into()));
        assert_eq!(binary, "qemu-system-aarch64");
        let line = arm.join(" ");
        assert!(line.contains("pci-serial,chardev=s1") && line.contains("AAVMF_CODE.fd"));
    }
}
