//! System tests: Debian's unmodified i386 kernel with the busybox
//! initramfs of scripts/make-initramfs (with guests/linux/systest in it)
//! boots under btvmm, as a user would run it (DESIGN.md section 7).
//!
//! The kernel and image come from the environment, as .ci/run builds them:
//! BTVMM_DEBIAN_KERNEL (scripts/fetch-debian-kernel) and BTVMM_LINUX_INITRD
//! (scripts/make-initramfs --add .../systest:/bin/systest). Hence ignored
//! by default: `cargo test -p host-loader --test linux -- --ignored`.
//!
//! Each test boots once (or, for the reset test, as often as it resets)
//! and checks everything it can in that boot. A failure shows the last 30
//! console lines and the monitor's counters.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The guest's banner (guests/linux/init).
const BANNER: &str = "btvmm guest: busybox initramfs ready";
/// Longest a boot with its commands may take here.
const TIMEOUT: Duration = Duration::from_secs(300);

fn kernel() -> PathBuf {
    let kernel = std::env::var_os("BTVMM_DEBIAN_KERNEL")
        .map(PathBuf::from)
        .expect("BTVMM_DEBIAN_KERNEL names Debian's vmlinuz (scripts/fetch-debian-kernel)");
    assert!(
        kernel.is_file(),
        "BTVMM_DEBIAN_KERNEL: no file {}",
        kernel.display()
    );
    kernel
}

fn initrd() -> PathBuf {
    let initrd = std::env::var_os("BTVMM_LINUX_INITRD")
        .map(PathBuf::from)
        .expect("BTVMM_LINUX_INITRD names the system-test initramfs (scripts/make-initramfs)");
    // Without it each boot would only time out waiting for a shell.
    assert!(
        initrd.is_file(),
        "BTVMM_LINUX_INITRD: no file {}",
        initrd.display()
    );
    initrd
}

/// A finished run: console output, stderr (with --stats), exit status.
struct Run {
    console: String,
    stderr: String,
    status: Option<i32>,
}

impl Run {
    /// The last 30 console lines and the counters, for failure messages.
    fn context(&self) -> String {
        let lines: Vec<&str> = self.console.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "exit status {:?}\n--- last console lines ---\n{tail}\n--- stderr ---\n{}",
            self.status, self.stderr
        )
    }

    /// The console after the banner (what the shell printed), or a panic
    /// with the context.
    fn after_banner(&self) -> &str {
        match self.console.find(BANNER) {
            Some(at) => &self.console[at + BANNER.len()..],
            None => panic!("the guest never printed its banner\n{}", self.context()),
        }
    }
}

/// A btvmm run under way, its console collected by a thread.
struct Running {
    /// None once [`Running::finish`] took it.
    child: Option<std::process::Child>,
    stdin: Option<std::process::ChildStdin>,
    console: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

impl Drop for Running {
    /// A test that fails midway leaves no VM running behind it.
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Running {
    fn start(extra_args: &[&str], append: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--stats", "--kernel"])
            .arg(kernel())
            .arg("--initrd")
            .arg(initrd())
            .args(["--append", append])
            .args(extra_args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start btvmm");
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped");
        let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let reader = {
            let console = std::sync::Arc::clone(&console);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(read) = std::io::Read::read(&mut stdout, &mut buffer) {
                    if read == 0 {
                        break;
                    }
                    console
                        .lock()
                        .expect("console buffer")
                        .extend_from_slice(&buffer[..read]);
                }
            })
        };
        Self {
            child: Some(child),
            stdin,
            console,
            reader: Some(reader),
            started: std::time::Instant::now(),
        }
    }

    /// Waits until the console shows `text` `count` times (or the run
    /// ended or timed out): whether it did.
    fn wait_for(&mut self, text: &str, count: usize) -> bool {
        loop {
            let seen = String::from_utf8_lossy(&self.console.lock().expect("console buffer"))
                .matches(text)
                .count();
            if seen >= count {
                return true;
            }
            let ended = self
                .child
                .as_mut()
                .is_none_or(|child| child.try_wait().ok().flatten().is_some());
            if self.started.elapsed() > TIMEOUT || ended {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_in(&mut self, input: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(input.as_bytes());
        }
    }

    /// Closes the console's input and waits for the end.
    fn finish(mut self) -> Run {
        drop(self.stdin.take());
        // At least a few seconds to end, even when the banner never came
        // (the panic then shows what the run printed).
        let left = TIMEOUT
            .saturating_sub(self.started.elapsed())
            .max(Duration::from_secs(5));
        let child = self.child.take().expect("finish takes the child once");
        let output = common::wait_with_timeout(child, left);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let console = std::mem::take(&mut *self.console.lock().expect("console buffer"));
        Run {
            // The serial console ends lines with CR LF.
            console: String::from_utf8_lossy(&console).replace("\r\n", "\n"),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            status: output.status.code(),
        }
    }
}

/// Boots and types each of `inputs` into the console once the banner has
/// appeared that many times (the first after the first boot, the second
/// after the kernel booted again, ...), then waits for the end.
fn boot(extra_args: &[&str], append: &str, inputs: &[&str]) -> Run {
    let mut running = Running::start(extra_args, append);
    for (boots, input) in inputs.iter().enumerate() {
        running.wait_for(BANNER, boots + 1);
        running.type_in(input);
    }
    running.finish()
}

/// The lines between `@@name` and the next `@@` marker.
fn section<'a>(shell: &'a str, name: &str) -> &'a str {
    let marker = format!("@@{name}\n");
    let start = shell
        .find(&marker)
        .map(|at| at + marker.len())
        .unwrap_or_else(|| panic!("no {name} section in:\n{shell}"));
    let rest = &shell[start..];
    let end = rest.find("@@").unwrap_or(rest.len());
    &rest[..end]
}

/// The systest lines (`ok`/`FAIL` and the summary) of a transcript.
fn systest_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.trim_start_matches("~ # ").trim_end_matches('\r'))
        .filter(|line| {
            line.starts_with("ok ") || line.starts_with("FAIL ") || line.starts_with("systest: ")
        })
        .map(str::to_owned)
        .collect()
}

/// The kHz of "tsc: Detected 2445.430 MHz TSC".
fn tsc_khz_detected(dmesg: &str) -> Option<u64> {
    let line = dmesg.lines().find(|line| line.ends_with(" MHz TSC"))?;
    let mhz = line.split_whitespace().rev().nth(2)?;
    let (whole, fraction) = mhz.split_once('.')?;
    Some(whole.parse::<u64>().ok()? * 1000 + fraction.parse::<u64>().ok()?)
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn linux_boots_to_a_shell_and_runs_the_system_test_as_under_qemu() {
    let commands = "echo @@uname; uname -a\n\
                    echo @@cpuinfo; cat /proc/cpuinfo\n\
                    echo @@dmesg; dmesg\n\
                    echo @@systest; /bin/systest; echo @@end\n\
                    poweroff -f\n";
    let run = boot(
        &[],
        "console=ttyS0 quiet panic=-1 btvmm.echo=off",
        &[commands],
    );
    let context = run.context();
    assert_eq!(
        run.status,
        Some(0),
        "power-off ends btvmm with 0\n{context}"
    );
    let shell = run.after_banner();

    let uname = section(shell, "uname");
    assert!(
        uname.contains("Linux btvmm 6.1.0-") && uname.contains(" i686 GNU/Linux"),
        "uname -a: {uname}\n{context}"
    );

    let cpuinfo = section(shell, "cpuinfo");
    // An invariant TSC (the host's, when its kernel trusts it as constant
    // and non-stop) of known frequency, with IA32_TSC_ADJUST: Linux needs
    // neither a calibration nor the clocksource watchdog for it.
    assert!(
        world_switch::sys::tsc::host_tsc_invariant(),
        "this host's TSC is not invariant: the checks below need one"
    );
    let flags = "flags\t\t: fpu pse tsc msr cx8 cmov mmx fxsr sse sse2 constant_tsc nonstop_tsc \
                 cpuid tsc_known_freq hypervisor tsc_adjust";
    for line in [
        "vendor_id\t: GenuineIntel",
        "model name\t: btvmm virtual i686 CPU",
        "cpu family\t: 6",
        flags,
    ] {
        assert!(
            cpuinfo.lines().any(|got| got.trim_end() == line),
            "/proc/cpuinfo lacks {line:?}:\n{cpuinfo}"
        );
    }

    let dmesg = section(shell, "dmesg");
    assert!(
        dmesg.contains("Run /init as init process"),
        "dmesg:\n{dmesg}"
    );
    // The kernel takes the TSC's frequency from CPUID (leaf 0x15) instead
    // of calibrating it against the PIT, whose polling loop gives up on a
    // busy host: the benchmarks' clock is the TSC. It is the host's TSC,
    // so the frequency is the host's.
    let host_khz = world_switch::sys::tsc::TscMeasurement::start()
        .finish()
        .expect("the host's TSC");
    let guest_khz = tsc_khz_detected(dmesg).unwrap_or_else(|| panic!("no TSC frequency:\n{dmesg}"));
    assert!(
        guest_khz.abs_diff(u64::from(host_khz)) <= u64::from(host_khz) / 1000,
        "the guest's TSC runs at {guest_khz} kHz, the host's at {host_khz} kHz"
    );
    for bad in [
        "Fast TSC calibration",
        "Unable to calibrate",
        "Marking TSC unstable",
    ] {
        assert!(
            !dmesg.contains(bad),
            "the TSC was calibrated ({bad}):\n{dmesg}"
        );
    }
    assert!(
        dmesg.contains("clocksource: Switched to clocksource tsc\n"),
        "dmesg:\n{dmesg}"
    );
    for bad in ["WARNING", "BUG", "Oops", "Call Trace"] {
        let lines: Vec<&str> = dmesg.lines().filter(|line| line.contains(bad)).collect();
        assert!(lines.is_empty(), "dmesg has {bad}:\n{}", lines.join("\n"));
    }

    let ours = systest_lines(section(shell, "systest"));
    assert!(
        ours.last()
            .is_some_and(|summary| summary.ends_with(" passed, 0 failed")),
        "systest under btvmm:\n{}\n{context}",
        ours.join("\n")
    );

    // The same image under QEMU TCG gives the same program output.
    let qemu = Command::new(common::guests().join("linux/run-qemu"))
        .arg(kernel())
        .arg(initrd())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("piped")
                .write_all(b"/bin/systest\n")?;
            Ok(child)
        })
        .expect("run guests/linux/run-qemu");
    let qemu = common::wait_with_timeout(qemu, TIMEOUT);
    let theirs = systest_lines(&String::from_utf8_lossy(&qemu.stdout).replace("\r\n", "\n"));
    assert_eq!(
        ours,
        theirs,
        "systest output under btvmm and under QEMU\n{}",
        String::from_utf8_lossy(&qemu.stderr)
    );
}

/// The monitor emulating only what it must (`--exec native`: no
/// interpreted stretches): the system test passes all the same. (The
/// other extreme, `--exec interpret`, does not boot Linux in a useful time
/// with today's interpreter: past 12 s of guest time it had not reached
/// /init after 400 s.)
#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn linux_runs_the_system_test_with_kernel_code_native() {
    let commands = "echo @@systest; /bin/systest; echo @@end\n\
                    poweroff -f\n";
    let run = boot(
        &["--exec", "native"],
        "console=ttyS0 quiet panic=-1 btvmm.echo=off",
        &[commands],
    );
    let context = run.context();
    assert_eq!(
        run.status,
        Some(0),
        "power-off ends btvmm with 0\n{context}"
    );
    let ours = systest_lines(section(run.after_banner(), "systest"));
    assert!(
        ours.last()
            .is_some_and(|summary| summary.ends_with(" passed, 0 failed")),
        "systest under --exec native:\n{}\n{context}",
        ours.join("\n")
    );
    assert!(
        run.stderr.contains("emulated instructions")
            && !run.stderr.contains("interpreted stretches"),
        "no instruction interpreted:\n{context}"
    );
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn linux_resets_reboot_a_panic_is_shown_and_power_off_ends_the_run() {
    // reboot -f resets the machine (the keyboard controller's pulse):
    // the kernel boots again from its entry and reads the rest of the
    // input; a panic with panic=-1 resets it too; then it powers off.
    let run = boot(
        &[],
        "console=ttyS0 quiet panic=-1",
        &[
            "reboot -f\n",
            "echo c > /proc/sysrq-trigger\n",
            "poweroff -f\n",
        ],
    );
    let context = run.context();
    assert_eq!(run.status, Some(0), "{context}");
    assert_eq!(
        run.console.matches(BANNER).count(),
        3,
        "three boots\n{context}"
    );
    assert!(
        run.console.contains("Kernel panic - not syncing"),
        "the panic is on the console\n{context}"
    );
    assert!(
        run.stderr.contains("guest resets: 2"),
        "two resets in --stats\n{context}"
    );

    // With --no-reboot the reset ends the run, with status 0 and a line.
    let run = boot(
        &["--no-reboot"],
        "console=ttyS0 quiet panic=-1",
        &["reboot -f\n"],
    );
    let context = run.context();
    assert_eq!(run.status, Some(0), "{context}");
    assert_eq!(run.console.matches(BANNER).count(), 1, "{context}");
    assert!(
        run.stderr
            .contains("btvmm: the guest reset the machine; stopping (--no-reboot)"),
        "{context}"
    );
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn sigterm_and_sigint_stop_the_vm_cleanly() {
    for (signal, status) in [("TERM", 143), ("INT", 130)] {
        let child = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--kernel"])
            .arg(kernel())
            .arg("--initrd")
            .arg(initrd())
            .args(["--append", "console=ttyS0 quiet"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start btvmm");
        let pid = child.id();
        // Let it start its world processes and run the guest a while.
        std::thread::sleep(Duration::from_secs(3));
        let worlds = world_processes(pid);
        assert!(!worlds.is_empty(), "no world processes under {pid}");
        Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        let output = common::wait_with_timeout(child, Duration::from_secs(20));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(status), "SIG{signal}: {stderr}");
        assert!(
            stderr.contains("stopped by signal"),
            "SIG{signal}: {stderr}"
        );
        for world in worlds {
            assert!(
                !std::path::Path::new(&format!("/proc/{world}")).exists()
                    || std::fs::read_to_string(format!("/proc/{world}/stat"))
                        .is_ok_and(|stat| stat.contains(") Z ")),
                "world process {world} still runs after SIG{signal}"
            );
        }
    }
}

/// The pids of `parent`'s children (its world processes).
fn world_processes(parent: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect()
}

/// What a tmux pane shows now, each line without its trailing blanks (a
/// curses screen fills whole rows).
fn capture(session: &str) -> String {
    let output = Command::new("tmux")
        .args(["capture-pane", "-p", "-J", "-S", "-200", "-t", session])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| format!("{}\n", line.trim_end()))
        .collect()
}

/// Waits until the pane shows `text` (`count` times at least).
fn wait_for(session: &str, text: &str, count: usize) -> String {
    let started = std::time::Instant::now();
    loop {
        let screen = capture(session);
        if screen.matches(text).count() >= count {
            return screen;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the terminal never showed {text:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn keys(session: &str, keys: &[&str]) {
    let status = Command::new("tmux")
        .args(["send-keys", "-t", session])
        .args(keys)
        .status()
        .expect("tmux send-keys");
    assert!(status.success());
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn on_a_terminal_the_console_is_raw_ctrl_c_reaches_the_guest_and_ctrl_a_x_quits() {
    let session = format!("btvmm-test-{}", std::process::id());
    let command = format!(
        "{} run --kernel {} --initrd {} --append 'console=ttyS0 quiet'; echo EXIT=$?; stty -a; sleep 600",
        env!("CARGO_BIN_EXE_btvmm"),
        kernel().display(),
        initrd().display()
    );
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "160", "-y", "50"])
        .arg(command)
        .status()
        .expect("tmux (scripts/install-deps --tests installs it)");
    assert!(started.success(), "tmux new-session");
    let outcome = std::panic::catch_unwind(|| {
        wait_for(&session, BANNER, 1);
        wait_for(&session, "~ #", 1);
        // Typing works, and the guest's shell echoes and computes.
        keys(&session, &["echo $((6*7))", "Enter"]);
        wait_for(&session, "\n42\n", 1);
        // Ctrl-C goes to the guest: it interrupts the guest's sleep, not
        // btvmm.
        keys(&session, &["sleep 100", "Enter"]);
        std::thread::sleep(Duration::from_secs(2));
        keys(&session, &["C-c"]);
        keys(&session, &["echo after-ctrl-c", "Enter"]);
        wait_for(&session, "\nafter-ctrl-c\n", 1);
        // Ctrl-A x ends btvmm with status 0 and the terminal is cooked
        // again.
        keys(&session, &["C-a", "x"]);
        let screen = wait_for(&session, "EXIT=0", 1);
        assert!(
            screen.contains(" icanon ") && screen.contains(" echo "),
            "the terminal was not restored:\n{screen}"
        );
    });
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// What a tmux pane shows now, with its colours as escape sequences.
fn capture_colours(session: &str) -> String {
    let output = Command::new("tmux")
        .args(["capture-pane", "-p", "-e", "-t", session])
        .output()
        .expect("tmux capture-pane");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Waits until the pane no longer shows `text`.
fn wait_gone(session: &str, text: &str) -> String {
    let started = std::time::Instant::now();
    loop {
        let screen = capture(session);
        if !screen.contains(text) {
            return screen;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "the terminal still shows {text:?}:\n{screen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn the_curses_display_shows_the_vga_console_takes_keys_pauses_and_reboots() {
    let session = format!("btvmm-display-{}", std::process::id());
    let serial = std::env::temp_dir().join(format!("btvmm-display-{}.log", std::process::id()));
    let command = format!(
        "{} run --display curses --serial {} --kernel {} --initrd {} \
         --append 'console=tty0 console=ttyS0 quiet'; echo EXIT=$?; stty -a; sleep 600",
        env!("CARGO_BIN_EXE_btvmm"),
        serial.display(),
        kernel().display(),
        initrd().display()
    );
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "100", "-y", "30"])
        .arg(command)
        .status()
        .expect("tmux (scripts/install-deps --tests installs it)");
    assert!(started.success(), "tmux new-session");
    let outcome = std::panic::catch_unwind(|| {
        // The shell on tty1 (guests/linux/init), on the VGA text screen,
        // and the status line under it.
        wait_for(&session, "built-in shell (ash)", 1);
        let screen = wait_for(&session, "~ #", 1);
        assert!(
            screen.contains("btvmm running") && screen.contains("C-a m menu"),
            "no status line:\n{screen}"
        );
        // A command typed at the terminal runs and shows its output.
        keys(&session, &["echo $((6*7))", "Enter"]);
        wait_for(&session, "\n42\n", 1);
        // Extended keys: the cursor moves left in the shell's line editor.
        keys(&session, &["echo abc", "Left", "Left", "X", "Enter"]);
        wait_for(&session, "\naXbc\n", 1);
        // The kernel's console is the screen too.
        keys(
            &session,
            &["echo '<1>kernel-says-hello' >/dev/kmsg", "Enter"],
        );
        wait_for(&session, "] kernel-says-hello", 1);
        // Colours: the VGA attribute of red text becomes a red terminal
        // colour.
        keys(
            &session,
            &["printf '\\033[31mRED-TEXT\\033[0m\\n'", "Enter"],
        );
        wait_for(&session, "\nRED-TEXT\n", 1);
        let colours = capture_colours(&session);
        assert!(
            colours.contains("\u{1b}[31mRED-TEXT") || colours.contains(";31mRED-TEXT"),
            "RED-TEXT is not red:\n{colours:?}"
        );
        // Ctrl-C goes to the guest's foreground process.
        keys(&session, &["sleep 100", "Enter"]);
        std::thread::sleep(Duration::from_secs(2));
        keys(&session, &["C-c"]);
        keys(&session, &["echo after-ctrl-c", "Enter"]);
        wait_for(&session, "\nafter-ctrl-c\n", 1);

        // The menu: pause; keys typed meanwhile wait for the resume.
        keys(&session, &["C-a", "m"]);
        wait_for(&session, "btvmm menu", 1);
        keys(&session, &["p"]);
        wait_for(&session, "btvmm PAUSED", 1);
        keys(&session, &["echo while-paused", "Enter"]);
        std::thread::sleep(Duration::from_secs(2));
        let screen = capture(&session);
        assert!(
            !screen.contains("\nwhile-paused\n") && screen.contains("btvmm PAUSED"),
            "the paused guest ran a command:\n{screen}"
        );
        // The paused vCPU's registers.
        keys(&session, &["C-a", "m", "r"]);
        let screen = wait_for(&session, "vCPU registers", 1);
        assert!(
            screen.contains("EIP ") && screen.contains("CR3 ") && screen.contains("CS 0060"),
            "registers:\n{screen}"
        );
        keys(&session, &["Escape"]);
        wait_gone(&session, "vCPU registers");
        keys(&session, &["C-a", "m", "p"]);
        wait_for(&session, "\nwhile-paused\n", 1);
        wait_for(&session, "btvmm running", 1);
        // The counters panel.
        keys(&session, &["C-a", "m", "c"]);
        wait_for(&session, "monitor counters", 1);
        keys(&session, &["Escape"]);
        wait_gone(&session, "monitor counters");

        // Ctrl-Alt-Delete from the menu: with ctrl-alt-del set the kernel
        // restarts at once, and the machine boots again.
        keys(
            &session,
            &["echo 1 >/proc/sys/kernel/ctrl-alt-del; clear", "Enter"],
        );
        wait_gone(&session, "built-in shell (ash)");
        keys(&session, &["C-a", "m", "d"]);
        wait_for(&session, "built-in shell (ash)", 1);
        wait_for(&session, "~ #", 1);

        // Ctrl-A x ends btvmm with status 0 and gives the terminal back.
        keys(&session, &["C-a", "x"]);
        let screen = wait_for(&session, "EXIT=0", 1);
        assert!(
            screen.contains(" icanon ") && screen.contains(" echo "),
            "the terminal was not restored:\n{screen}"
        );
        // COM1 went to its file meanwhile.
        let serial = std::fs::read_to_string(&serial).unwrap_or_default();
        assert!(
            serial.contains(BANNER),
            "the serial console's output is not in its file:\n{serial}"
        );
    });
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    let _ = std::fs::remove_file(&serial);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A fresh, zeroed disk image of `mib` MiB for one test.
fn disk_image(tag: &str, mib: u64) -> PathBuf {
    let path = std::env::temp_dir().join(format!("btvmm-{tag}-{}.img", std::process::id()));
    let file = std::fs::File::create(&path).expect("create the image");
    file.set_len(mib << 20).expect("size the image");
    path
}

/// The shell commands that load the disk's modules and mount the disk's
/// file system at /mnt (after making an ext4 on it with Debian's
/// mkfs.ext4 when `make` is set).
fn mount_disk(make: bool) -> String {
    let mkfs = if make {
        "mkfs.ext4 -q /dev/sda && "
    } else {
        ""
    };
    format!("disk-modules && {mkfs}mkdir -p /mnt && mount -t ext4 /dev/sda /mnt && echo MOUNTED\n")
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn linux_keeps_what_it_wrote_to_the_disk_across_power_off_sigterm_and_reset() {
    let image = disk_image("persist", 64);
    let disk = format!("--disk={}", image.display());
    let append = "console=ttyS0 quiet btvmm.echo=off";
    // Boot 1: a file system and a file on it, its checksum, power off.
    let first = boot(
        &[&disk],
        append,
        &[&(mount_disk(true)
            + "dd if=/dev/urandom of=/mnt/a bs=1k count=768 2>/dev/null && cd /mnt && \
               md5sum a > a.md5 && cd / && sync && umount /mnt && echo WROTE-A\nexit\n")],
    );
    let shell = first.after_banner();
    assert!(shell.contains("MOUNTED"), "{}", first.context());
    assert!(shell.contains("WROTE-A"), "{}", first.context());
    assert_eq!(first.status, Some(0), "{}", first.context());
    assert!(
        common::counter(&first.stderr, "exit: string port out").unwrap_or(0) > 0,
        "sectors went out through string exits\n{}",
        first.context()
    );
    // The host sees an ext4 superblock at byte 1024: its magic 0xef53,
    // a journal (compatible feature 0x4) and extents (incompatible 0x40).
    let bytes = std::fs::read(&image).expect("read the image");
    let superblock = &bytes[1024..2048];
    assert_eq!(
        &superblock[0x38..0x3a],
        &[0x53, 0xef],
        "the superblock's magic"
    );
    let feature = |at: usize| u32::from_le_bytes(superblock[at..at + 4].try_into().expect("4"));
    assert_ne!(feature(0x5c) & 0x4, 0, "a journal");
    assert_ne!(feature(0x60) & 0x40, 0, "extents");
    // Boot 2: the file reads back; another is written, synced, and btvmm
    // is killed with SIGTERM the moment the guest's sync returned.
    let mut second = Running::start(&[&disk], append);
    assert!(second.wait_for(BANNER, 1), "no banner");
    second.type_in(
        &(mount_disk(false)
            + "cd /mnt && md5sum -c a.md5 && dd if=/dev/urandom of=b bs=1k count=256 \
               2>/dev/null && md5sum b > b.md5 && sync && echo SYNCED-B\n"),
    );
    let synced = second.wait_for("SYNCED-B", 1);
    let pid = second.child.as_ref().map_or(0, std::process::Child::id);
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    let second = second.finish();
    assert!(synced, "{}", second.context());
    let shell = second.after_banner();
    assert!(shell.contains("a: OK"), "{}", second.context());
    assert_eq!(second.status, Some(143), "{}", second.context());
    // The image was closed and its lock given up: the next run opens it.
    // Boot 3: the second file reads back after the SIGTERM (a file system
    // not unmounted: ext4 replays its journal). Then a
    // third file, synced, and the guest resets (the PC's reset: btvmm boots
    // it again in the same run, the disk powered on afresh): boot 4 reads
    // it back.
    let third = boot(
        &[&disk],
        append,
        &[
            &(mount_disk(false)
                + "cd /mnt && md5sum -c a.md5 b.md5 && echo CHECKED && \
                   dd if=/dev/urandom of=c bs=1k count=128 2>/dev/null && md5sum c > c.md5 \
                   && sync && reboot -f\n"),
            &(mount_disk(false) + "cd /mnt && md5sum -c c.md5 && cd / && echo AFTER-RESET\nexit\n"),
        ],
    );
    let shell = third.after_banner();
    assert!(shell.contains("a: OK"), "{}", third.context());
    assert!(shell.contains("b: OK"), "{}", third.context());
    assert!(shell.contains("CHECKED"), "{}", third.context());
    assert_eq!(
        third.console.matches(BANNER).count(),
        2,
        "{}",
        third.context()
    );
    assert!(shell.contains("c: OK"), "{}", third.context());
    assert!(shell.contains("AFTER-RESET"), "{}", third.context());
    assert_eq!(third.status, Some(0), "{}", third.context());
    let _ = std::fs::remove_file(&image);
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn linux_reads_and_writes_a_floppy_image() {
    // A 1.44 MB image whose sector n holds n's number throughout.
    let image = std::env::temp_dir().join(format!("btvmm-floppy-{}.img", std::process::id()));
    let mut bytes = vec![0u8; 1_474_560];
    for (index, sector) in bytes.chunks_mut(512).enumerate() {
        for (at, word) in sector.chunks_mut(4).enumerate() {
            let value = u32::try_from(index * 1000 + at).expect("small");
            word.copy_from_slice(&value.to_le_bytes());
        }
    }
    std::fs::write(&image, &bytes).expect("write the floppy image");
    let floppy = format!("--floppy={}", image.display());
    // The whole disk read back, then 20 KiB written across a track
    // boundary (sectors 30-69: cylinder 0 head 1 to cylinder 1 head 1).
    let run = boot(
        &[&floppy],
        "console=ttyS0 quiet btvmm.echo=off",
        &["insmod /lib/modules/floppy.ko && echo LOADED\n\
           for _ in $(seq 50); do [ -b /dev/fd0 ] && break; sleep 0.1; done\n\
           dd if=/dev/fd0 bs=18k count=80 2>/dev/null | md5sum | sed 's/ .*/ READ-ALL/'\n\
           dd if=/dev/urandom of=/tmp/w bs=512 count=40 2>/dev/null && \
           md5sum /tmp/w | sed 's/ .*/ WRITTEN/' && \
           dd if=/tmp/w of=/dev/fd0 bs=512 seek=30 conv=fsync 2>/dev/null && echo WROTE\n\
           echo 3 > /proc/sys/vm/drop_caches; \
           dd if=/dev/fd0 bs=512 skip=30 count=40 2>/dev/null | md5sum | sed 's/ .*/ REREAD/'\n\
           dmesg | grep -i -E 'floppy|fd0|FDC' | sed 's/^/DMESG /'\n\
           exit\n"],
    );
    let after = std::fs::read(&image).expect("read the floppy image back");
    let _ = std::fs::remove_file(&image);
    let shell = run.after_banner();
    assert!(shell.contains("LOADED"), "{}", run.context());
    assert!(
        shell.contains("is a post-1991 82077"),
        "Linux's floppy driver identifies the controller\n{}",
        run.context()
    );
    let md5 = |label: &str| -> String {
        shell
            .lines()
            .find_map(|line| {
                line.trim_start_matches("~ # ")
                    .strip_suffix(&format!(" {label}"))
            })
            .unwrap_or_else(|| panic!("no {label} line\n{}", run.context()))
            .to_owned()
    };
    let host_md5 = |data: &[u8]| -> String {
        let mut child = Command::new("md5sum")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("md5sum");
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(data)
            .expect("md5sum input");
        let output = child.wait_with_output().expect("md5sum");
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        md5("READ-ALL"),
        host_md5(&bytes),
        "the whole disk read\n{}",
        run.context()
    );
    assert!(shell.contains("WROTE"), "{}", run.context());
    let written = md5("WRITTEN");
    assert_eq!(
        md5("REREAD"),
        written,
        "read back in the guest\n{}",
        run.context()
    );
    assert_eq!(
        host_md5(&after[30 * 512..70 * 512]),
        written,
        "the write is in the image file"
    );
    assert_eq!(after[..30 * 512], bytes[..30 * 512], "nothing else changed");
    assert_eq!(after[70 * 512..], bytes[70 * 512..], "nothing else changed");
    assert_eq!(run.status, Some(0), "{}", run.context());
}

#[test]
#[ignore = "needs Debian's kernel and the system-test initramfs (see the module docs)"]
fn a_disk_image_in_use_or_unusable_stops_btvmm_with_one_line() {
    let image = disk_image("locked", 1);
    let disk = format!("--disk={}", image.display());
    let mut holder = Running::start(&[&disk], "console=ttyS0 quiet");
    assert!(holder.wait_for(BANNER, 1), "the first run started");
    let second = Command::new(env!("CARGO_BIN_EXE_btvmm"))
        .args(["run", "--kernel"])
        .arg(kernel())
        .arg(&disk)
        .stdin(Stdio::null())
        .output()
        .expect("run btvmm");
    drop(holder);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    std::fs::write(&image, [0u8; 1000]).expect("an odd size");
    let two_sectors = disk_image("two-sectors", 0);
    std::fs::write(&two_sectors, [0u8; 1024]).expect("two sectors");
    for (spec, says) in [
        (format!("--disk={}", image.display()), "not a whole"),
        ("--disk=/nonexistent/disk.img".to_string(), "No such file"),
        (
            format!("--disk={},cache=none", image.display()),
            "unknown disk option",
        ),
        // A floppy image must be 1.44 MB (two sectors are not).
        (
            format!("--floppy={}", two_sectors.display()),
            "a 1.44 MB floppy image is 1474560 bytes",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_btvmm"))
            .args(["run", "--kernel"])
            .arg(kernel())
            .arg(&spec)
            .stdin(Stdio::null())
            .output()
            .expect("run btvmm");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{spec}: {stderr}");
        assert!(stderr.contains(says), "{spec}: {stderr}");
        // Files: one line; a malformed option: clap's usage error.
        assert!(
            stderr.lines().count() == 1 || stderr.contains("--help"),
            "{spec}: {stderr}"
        );
    }
    let _ = std::fs::remove_file(&image);
    let _ = std::fs::remove_file(&two_sectors);
}

/// gdb on Linux: attached to a running guest (a pause at whatever it was
/// doing), a breakpoint at the getuid system call's kernel function stops
/// once per call of `bench getuid 3` and at no other time; gdb's Ctrl-C
/// stops the guest; a write watchpoint on the system call's return value
/// in its `pt_regs` on the kernel stack (paging on: the shadow MMU's write
/// tracking) stops where the kernel stores it; detach lets it run on, and
/// it powers off. Debian's
/// System.map is a stub (the real one is in the -dbg package): the address
/// comes from the guest's /proc/kallsyms, the same list, which also
/// follows the kernel's KASLR.
#[test]
#[ignore = "needs BTVMM_DEBIAN_KERNEL and BTVMM_LINUX_INITRD (run by .ci/run)"]
fn gdb_stops_at_a_kernel_function_once_per_call_then_detaches() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port");
    let mut running = Running::start(&["--gdb", &format!("tcp::{port}")], "console=ttyS0 quiet");
    assert!(running.wait_for(BANNER, 1), "no shell");
    // Once the shell prompts (a line typed before may be lost); typed
    // again if the answer does not come.
    let shown = |running: &Running| {
        String::from_utf8_lossy(&running.console.lock().expect("console")).into_owned()
    };
    let mut found = false;
    for _ in 0..3 {
        let prompts = shown(&running).matches("~ # ").count();
        assert!(
            running.wait_for("~ # ", prompts.max(1)),
            "no prompt\n{}",
            shown(&running)
        );
        running.type_in("grep ' __ia32_sys_getuid$' /proc/kallsyms\n");
        let asked = std::time::Instant::now();
        while asked.elapsed() < Duration::from_secs(30) && !found {
            found = shown(&running).contains(" T __ia32_sys_getuid");
            std::thread::sleep(Duration::from_millis(100));
        }
        if found {
            break;
        }
    }
    assert!(found, "no symbol\n{}", shown(&running));
    let console = shown(&running);
    let symbol = |suffix: &str| {
        console
            .lines()
            .find_map(|line| line.trim().strip_suffix(suffix))
            .filter(|address| address.len() == 8)
            .unwrap_or_else(|| panic!("no{suffix} in\n{console}"))
            .to_owned()
    };
    let getuid = symbol(" T __ia32_sys_getuid");
    // The wait is the shell's own (a busybox `sleep` would call getuid
    // itself, and might start after gdb set its breakpoint); the shell's
    // echo of the line must not count as the output: the marker is
    // computed.
    running.type_in("read -t 5 x; bench getuid 3; echo GDB-$((40 + 2))\n");
    let gdb = Command::new("gdb")
        .args(["-batch", "-nx", "-ex", "set architecture i386", "-ex"])
        .arg(format!("target remote :{port}"))
        .args(["-ex", &format!("break *0x{getuid}")])
        .args(["-ex", "continue", "-ex", "p/x $eip"])
        .args(["-ex", "continue", "-ex", "continue"])
        .args(["-ex", "info breakpoints"])
        // EAX: the pt_regs (regparm); regs->ax at 24 gets the result.
        .args(["-ex", "watch -l *(int*)($eax + 24)", "-ex", "continue"])
        .args(["-ex", "delete 2"])
        .args(["-ex", "continue", "-ex", "info breakpoints"])
        .args(["-ex", "detach"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("gdb (scripts/install-deps --tests installs it)");
    let done = running.wait_for("GDB-42", 1);
    // gdb waits in its last continue: Ctrl-C.
    let _ = Command::new("kill")
        .args(["-INT", &gdb.id().to_string()])
        .status();
    let gdb = common::wait_with_timeout(gdb, Duration::from_secs(60));
    let gdb = format!(
        "{}{}",
        String::from_utf8_lossy(&gdb.stdout),
        String::from_utf8_lossy(&gdb.stderr)
    );
    running.type_in("bench getuid 1000\npoweroff -f\n");
    let run = running.finish();
    let context = format!("gdb:\n{gdb}\n{}", run.context());
    assert!(done, "the guest did not finish the calls\n{context}");
    assert_eq!(
        gdb.matches("Breakpoint 1, ").count(),
        3,
        "one stop per getuid call\n{context}"
    );
    assert!(gdb.contains(&format!("$1 = 0x{getuid}")), "{context}");
    assert_eq!(
        gdb.matches("breakpoint already hit 3 times").count(),
        2,
        "no fourth stop before Ctrl-C\n{context}"
    );
    assert!(gdb.contains("Program received signal SIGINT"), "{context}");
    // -ENOSYS from the entry code, then getuid's 0 (root).
    assert!(
        gdb.contains("\nOld value = -38\nNew value = 0\n"),
        "the watchpoint stops at the store of the result\n{context}"
    );
    assert!(
        gdb.contains("[Inferior 1 (process 1) detached]"),
        "{context}"
    );
    let shell = run.after_banner();
    assert!(shell.contains("bench name=getuid count=3 "), "{context}");
    assert!(
        shell.contains("bench name=getuid count=1000 "),
        "the guest runs on after the detach\n{context}"
    );
    assert_eq!(run.status, Some(0), "{context}");
}
