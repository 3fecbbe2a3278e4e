//! The display as a user sees it: haul on a pseudo-terminal of 80 columns, its output fed to a
//! terminal emulator (vt100), and the final screen read back.

use std::fs::File;
use std::io::Read as _;
use std::os::fd::{AsFd as _, OwnedFd};
use std::process::{Child, Stdio};
use std::time::Duration;

use haul_test::FaultServer;
use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
use rustix::termios::{Winsize, tcsetwinsize};

use super::{get_args, haul, manifest, runtime, signal_when_flowing, wait_for};

/// A pseudo-terminal of 24 rows and 80 columns: the controlling side, and the path of the
/// terminal side for the child.
fn pty() -> (OwnedFd, File) {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    tcsetwinsize(
        terminal.as_fd(),
        Winsize {
            ws_row: 24,
            ws_col: 80,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .unwrap();
    (master, terminal)
}

/// Starts `haul args` with stderr and stdout on a new 80-column terminal; returns the child and
/// a thread that collects everything written to the terminal until haul ends.
fn on_terminal(args: &[&str]) -> (Child, std::thread::JoinHandle<Vec<u8>>) {
    let (master, terminal) = pty();
    let child = haul()
        .args(args)
        .env("TERM", "xterm")
        .stdin(Stdio::null())
        .stdout(Stdio::from(terminal.try_clone().unwrap()))
        .stderr(Stdio::from(terminal))
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut master = File::from(master);
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        // The terminal side closes when haul ends: the read then fails (EIO) or returns 0.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    (child, reader)
}

/// What an 80-column terminal shows at the end.
fn final_screen(output: &[u8]) -> Vec<String> {
    let size = |n: u16| std::num::NonZeroU16::new(n).unwrap();
    let mut parser = vt100::Parser::new(size(24), size(80), 0);
    parser.process(output);
    parser.screen().rows(0, 80).filter(|l| !l.trim().is_empty()).collect()
}

fn ends(child: &mut Child) -> i32 {
    assert!(
        wait_for(Duration::from_secs(120), || child.try_wait().unwrap().is_some()),
        "haul did not end"
    );
    child.wait().unwrap().code().unwrap_or(-1)
}

#[test]
fn the_final_screen_holds_the_summary_and_no_stale_bar() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    // Two seconds of a large transfer (bars drawn many times), a few small files, a 404.
    let mut lines = vec![
        server.url("video.bin", 3_000_000, "rate=1500000"),
        server.url("gone.bin", 10, "status=404"),
    ];
    lines.extend((0..20).map(|i| server.url(&format!("p{i}.jpg"), 1000, "")));
    let list = manifest(tmp.path(), &lines);
    let out = tmp.path().join("out");
    let (mut child, reader) = on_terminal(&get_args(&list, &out, &[]));
    assert_eq!(ends(&mut child), 1);
    let output = reader.join().unwrap();
    let text = String::from_utf8_lossy(&output);
    assert!(
        text.contains("files/s") && text.contains("ETA"),
        "bars were drawn: {text}"
    );
    let screen = final_screen(&output);
    let all = screen.join("\n");
    assert!(
        screen.iter().any(|l| l.starts_with("21 done, 0 skipped, 1 failed")),
        "summary on the final screen:\n{all}"
    );
    assert!(all.contains("failed 1 × http 404"), "{all}");
    assert!(
        !screen.iter().any(|l| l.contains(" active") || l.starts_with('[')),
        "a stale bar stayed on screen:\n{all}"
    );
}

#[test]
fn after_ctrl_c_the_hint_stays_readable() {
    let rt = runtime();
    let server = rt.block_on(FaultServer::start());
    let tmp = tempfile::tempdir().unwrap();
    let list = manifest(tmp.path(), &[server.url("big.bin", 8_000_000, "rate=1000000")]);
    let out = tmp.path().join("out");
    let (mut child, reader) = on_terminal(&get_args(&list, &out, &[]));
    signal_when_flowing(&child, &haul::store::part_path(&out, "big.bin"), 1_000_000, "-INT");
    assert_eq!(ends(&mut child), 130);
    let screen = final_screen(&reader.join().unwrap());
    let all = screen.join("\n");
    let words: Vec<&str> = all.split_whitespace().collect();
    assert!(
        words.join(" ").contains("run the same command again to finish"),
        "hint on the final screen:\n{all}"
    );
    assert!(screen.iter().all(|l| !l.contains(" active")), "stale bar:\n{all}");
}
