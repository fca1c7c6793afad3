//! The serial console on the user's standard input and output.
//!
//! Standard input feeds COM1's receiver. On a terminal it is put in raw
//! mode (every key goes to the guest, Ctrl-C included) and restored on
//! every way out: the end of the run, an error, a panic, SIGINT/SIGTERM.
//! QEMU's escape keys work: `Ctrl-A x` ends the VM, `Ctrl-A Ctrl-A` sends
//! one Ctrl-A, `Ctrl-A h` lists the keys. From a pipe or a file the bytes
//! go to the guest as they are and the end of the input only stops input.
//!
//! A thread reads standard input and hands what it read to the host loop
//! over a channel, then wakes the loop (which sleeps on the world
//! channel's futex).

use std::io::{IsTerminal, Read};
use std::os::fd::AsFd;
use std::sync::Mutex;

use crossbeam_channel::{Receiver, Sender};
use nix::sys::termios::{self, SetArg, Termios};

/// What the user did at the console.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// Bytes for the guest's serial port.
    Input(Vec<u8>),
    /// Standard input ended (or failed): no more input will come.
    EndOfInput,
    /// The user asked to end the VM (`Ctrl-A x`).
    Quit,
}

/// The terminal's settings before raw mode, restored by
/// [`restore_terminal`].
static SAVED: Mutex<Option<Termios>> = Mutex::new(None);

/// Puts the terminal on standard input back as it was (no-op when raw
/// mode was never set). Safe to call more than once, from the panic hook
/// too.
pub fn restore_terminal() {
    let saved = match SAVED.lock() {
        Ok(mut saved) => saved.take(),
        Err(poisoned) => poisoned.into_inner().take(),
    };
    if let Some(saved) = saved {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &saved);
    }
}

/// The console of one run: raw mode while it lives, and the events of the
/// reader thread.
pub struct Console {
    events: Receiver<ConsoleEvent>,
}

impl Console {
    /// Starts reading standard input; `wake` is called after each event is
    /// queued. Puts a terminal in raw mode.
    pub fn start(wake: impl Fn() + Send + 'static) -> Self {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        if terminal && let Ok(saved) = termios::tcgetattr(stdin.as_fd()) {
            let mut raw = saved.clone();
            termios::cfmakeraw(&mut raw);
            // Keep output processing: the guest's "\n" is Linux's "\r\n"
            // already, and btvmm's own messages stay readable.
            raw.output_flags = saved.output_flags;
            if termios::tcsetattr(stdin.as_fd(), SetArg::TCSADRAIN, &raw).is_ok()
                && let Ok(mut slot) = SAVED.lock()
            {
                *slot = Some(saved);
            }
        }
        let (sender, events) = crossbeam_channel::unbounded();
        let (started, start) = crossbeam_channel::bounded(1);
        // Without a thread there is no input, as with standard input at
        // its end: the guest runs on.
        if std::thread::Builder::new()
            .name("console".into())
            .spawn(move || {
                let _ = started.send(());
                read_input(terminal, &sender, &wake);
            })
            .is_ok()
        {
            // The thread's own start-up (its name, stack bounds, signal
            // stack) is over before btvmm confines itself: the host's
            // filter need not allow those calls.
            let _ = start.recv();
        }
        Self { events }
    }

    /// The events that arrived since the last call.
    pub fn take_events(&self) -> Vec<ConsoleEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn read_input(terminal: bool, sender: &Sender<ConsoleEvent>, wake: &dyn Fn()) {
    let mut stdin = std::io::stdin().lock();
    let mut escape = Escape::default();
    let mut buffer = [0u8; 256];
    loop {
        let read = match stdin.read(&mut buffer) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => {
                let _ = sender.send(ConsoleEvent::EndOfInput);
                wake();
                return;
            }
            Ok(read) => read,
        };
        let mut quit = false;
        let bytes = if terminal {
            let mut bytes = Vec::with_capacity(read);
            for &byte in &buffer[..read] {
                match escape.feed(byte) {
                    Key::Send(byte) => bytes.push(byte),
                    Key::Quit => quit = true,
                    Key::Help => eprint!("{HELP}"),
                    Key::None => {}
                }
            }
            bytes
        } else {
            buffer[..read].to_vec()
        };
        if !bytes.is_empty() && sender.send(ConsoleEvent::Input(bytes)).is_err() {
            return;
        }
        if quit {
            let _ = sender.send(ConsoleEvent::Quit);
            wake();
            return;
        }
        wake();
    }
}

const HELP: &str = "\r\nC-a h    print this help\r\nC-a x    exit btvmm\r\nC-a C-a  send C-a\r\n";

/// The prefix key of QEMU's console escapes.
const CTRL_A: u8 = 0x01;

/// What a typed byte means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Send this byte to the guest.
    Send(u8),
    /// End the VM.
    Quit,
    /// Show the escape keys.
    Help,
    /// Nothing (the escape prefix, or an unknown escape).
    None,
}

/// QEMU's `Ctrl-A` escapes, as a state machine over typed bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Escape {
    after_prefix: bool,
}

impl Escape {
    /// Interprets one typed byte.
    pub fn feed(&mut self, byte: u8) -> Key {
        if !self.after_prefix {
            if byte == CTRL_A {
                self.after_prefix = true;
                return Key::None;
            }
            return Key::Send(byte);
        }
        self.after_prefix = false;
        match byte {
            b'x' | b'X' => Key::Quit,
            CTRL_A => Key::Send(CTRL_A),
            b'h' | b'H' | b'?' => Key::Help,
            _ => Key::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut escape = Escape::default();
        bytes.iter().map(|&byte| escape.feed(byte)).collect()
    }

    #[test]
    fn qemu_escapes() {
        assert_eq!(
            keys(b"ls\r"),
            [Key::Send(b'l'), Key::Send(b's'), Key::Send(b'\r')]
        );
        assert_eq!(keys(&[CTRL_A, b'x']), [Key::None, Key::Quit]);
        assert_eq!(
            keys(&[CTRL_A, CTRL_A, b'a']),
            [Key::None, Key::Send(CTRL_A), Key::Send(b'a')]
        );
        assert_eq!(keys(&[CTRL_A, b'h']), [Key::None, Key::Help]);
        // An unknown escape is dropped; the next key is ordinary again.
        assert_eq!(
            keys(&[CTRL_A, b'z', b'x']),
            [Key::None, Key::None, Key::Send(b'x')]
        );
        // Ctrl-C goes to the guest.
        assert_eq!(keys(&[0x03]), [Key::Send(0x03)]);
    }
}
