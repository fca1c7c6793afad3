//! `--display curses`: the guest's VGA text screen in the user's terminal,
//! its keyboard, a status line of live monitor figures and a small menu
//! (`Ctrl-A m`) to pause and resume the vCPU, show its registers and the
//! counters, send Ctrl-Alt-Delete and quit.
//!
//! Two threads share the work. The host loop (run.rs) owns the devices and
//! guest RAM: at most every [`FRAME_INTERVAL`] it copies the text window and
//! the VGA's registers into a [`Frame`] and leaves it in a slot. The display
//! thread owns the terminal (ncurses through pancurses): it draws the
//! latest frame when one arrives, reads keys with a timeout of the same
//! interval, and hands what the user did to the host loop as
//! [`DisplayEvent`]s over a channel, waking it. Neither thread spins: an
//! idle guest costs two wake-ups per interval.
//!
//! What is drawn comes from the guest's own registers: the CRTC's start
//! address, geometry and cursor, the attribute controller's and DAC's
//! colours (mapped to the terminal's 8 colours, bold for the bright ones)
//! and the code page 437 characters in Unicode (plain ASCII when the
//! terminal's locale is not UTF-8).
//!
//! Keys: characters and the terminal's function keys become AT keystrokes
//! ([`devices::keyboard`]); `Ctrl-A` is the prefix of btvmm's own keys as in
//! QEMU (`Ctrl-A m` menu, `Ctrl-A x` quit, `Ctrl-A h` help, `Ctrl-A Ctrl-A`
//! a Ctrl-A for the guest).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use btvmm_core::VcpuRegisters;
use crossbeam_channel::{Receiver, Sender};
use devices::keyboard::{Key, Keystroke, Modifiers, keystroke_for_char};
use devices::vga::{Content, TextLayout};
use guest_monitor::counters::{Counter, Counters};

use crate::LoaderError;

/// How often the host loop makes a frame and the display thread looks for
/// keys (at most; a frame is drawn only when one arrived).
pub const FRAME_INTERVAL: Duration = Duration::from_millis(50);

/// One picture of the guest's screen and the monitor's state.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The screen's layout from the VGA's registers.
    pub layout: TextLayout,
    /// The cells, row by row (`layout.rows * layout.columns`): character
    /// in the low byte, attribute in the high byte.
    pub cells: Vec<u16>,
    /// The colour each attribute colour shows (CGA colour indexes).
    pub palette: [u8; 16],
    /// The monitor's last published counters.
    pub counters: Vec<u64>,
    /// The vCPU's registers while it is paused.
    pub paused: Option<VcpuRegisters>,
    /// Whether a pause was asked for and has not arrived yet.
    pub pausing: bool,
    /// When the frame was made.
    pub at: Instant,
}

/// What the user did, for the host loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayEvent {
    /// A key for the guest's keyboard.
    Key(Keystroke),
    /// Pause the vCPU.
    Pause,
    /// Resume it.
    Resume,
    /// End the VM.
    Quit,
}

/// A key from the terminal, as the display's input logic sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TerminalKey {
    /// A character (control characters included).
    Char(char),
    /// A key the terminal reported by name, with Shift or not.
    Named(Key, bool),
    /// The terminal changed size.
    Resize,
}

/// The prefix of btvmm's own keys.
const CTRL_A: char = '\u{1}';
/// Escape, which closes the menu.
const ESC: char = '\u{1b}';

/// What the display shows over the guest's screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// Nothing: the guest's screen.
    None,
    /// The menu.
    Menu,
    /// The vCPU's registers (once it is paused).
    Registers,
    /// The monitor's counters.
    Counters,
    /// The keys.
    Help,
}

/// The display's input state: the `Ctrl-A` prefix and the overlay.
#[derive(Clone, Debug)]
pub struct Ui {
    after_prefix: bool,
    /// What is shown over the screen.
    pub overlay: Overlay,
    /// Whether the user asked for a pause (and no resume since).
    pub pause_asked: bool,
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

impl Ui {
    /// Nothing shown over the screen, the guest running.
    #[must_use]
    pub fn new() -> Self {
        Self {
            after_prefix: false,
            overlay: Overlay::None,
            pause_asked: false,
        }
    }

    /// What one terminal key does.
    pub fn key(&mut self, key: TerminalKey) -> Vec<DisplayEvent> {
        let TerminalKey::Char(ch) = key else {
            if self.overlay != Overlay::None {
                // Any named key closes a panel; the menu ignores them.
                if self.overlay != Overlay::Menu {
                    self.overlay = Overlay::None;
                }
                return Vec::new();
            }
            return match key {
                TerminalKey::Named(key, shift) => vec![DisplayEvent::Key(Keystroke::new(
                    key,
                    Modifiers {
                        shift,
                        ..Modifiers::NONE
                    },
                ))],
                _ => Vec::new(),
            };
        };
        if self.after_prefix {
            self.after_prefix = false;
            return match ch {
                'm' | 'M' => {
                    self.overlay = Overlay::Menu;
                    Vec::new()
                }
                'x' | 'X' => vec![DisplayEvent::Quit],
                'h' | 'H' | '?' => {
                    self.overlay = Overlay::Help;
                    Vec::new()
                }
                CTRL_A => keystroke_for_char(CTRL_A)
                    .map(DisplayEvent::Key)
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
        }
        if ch == CTRL_A {
            self.after_prefix = true;
            return Vec::new();
        }
        match self.overlay {
            Overlay::None => keystroke_for_char(ch)
                .map(DisplayEvent::Key)
                .into_iter()
                .collect(),
            Overlay::Menu => self.menu_key(ch),
            Overlay::Registers | Overlay::Counters | Overlay::Help => {
                self.overlay = Overlay::None;
                Vec::new()
            }
        }
    }

    fn menu_key(&mut self, ch: char) -> Vec<DisplayEvent> {
        match ch {
            'p' | 'P' => {
                self.overlay = Overlay::None;
                self.pause_asked = !self.pause_asked;
                vec![if self.pause_asked {
                    DisplayEvent::Pause
                } else {
                    DisplayEvent::Resume
                }]
            }
            'r' | 'R' => {
                self.overlay = Overlay::Registers;
                // Registers are those of a paused vCPU: pause it first.
                if self.pause_asked {
                    Vec::new()
                } else {
                    self.pause_asked = true;
                    vec![DisplayEvent::Pause]
                }
            }
            'c' | 'C' => {
                self.overlay = Overlay::Counters;
                Vec::new()
            }
            'd' | 'D' => {
                self.overlay = Overlay::None;
                vec![DisplayEvent::Key(Keystroke::CTRL_ALT_DELETE)]
            }
            'q' | 'Q' => vec![DisplayEvent::Quit],
            ESC | 'm' | 'M' => {
                self.overlay = Overlay::None;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// The lines of the overlay (empty for none).
    #[must_use]
    pub fn overlay_lines(&self, frame: Option<&Frame>) -> Vec<String> {
        match self.overlay {
            Overlay::None => Vec::new(),
            Overlay::Menu => {
                let pause = if self.pause_asked {
                    "p  resume the guest"
                } else {
                    "p  pause the guest"
                };
                [
                    "btvmm menu",
                    "",
                    pause,
                    "r  registers (pauses the guest)",
                    "c  monitor counters",
                    "d  send Ctrl-Alt-Delete",
                    "q  quit btvmm",
                    "Esc  back to the guest",
                ]
                .iter()
                .map(ToString::to_string)
                .collect()
            }
            Overlay::Help => [
                "btvmm keys",
                "",
                "C-a m    menu: pause, registers, counters, Ctrl-Alt-Delete, quit",
                "C-a x    quit btvmm",
                "C-a C-a  send C-a to the guest",
                "C-a h    this help",
                "",
                "any key closes this",
            ]
            .iter()
            .map(ToString::to_string)
            .collect(),
            Overlay::Registers => match frame.and_then(|frame| frame.paused) {
                Some(registers) => register_lines(&registers),
                None => vec![
                    "registers".to_string(),
                    String::new(),
                    "pausing the guest...".to_string(),
                ],
            },
            Overlay::Counters => {
                let mut lines = vec![
                    "monitor counters (nonzero; any key closes)".to_string(),
                    String::new(),
                ];
                if let Some(frame) = frame {
                    lines.extend(
                        Counters::from_slice(&frame.counters)
                            .report()
                            .into_iter()
                            .filter(|(_, value)| *value != 0)
                            .map(|(name, value)| format!("{value:>14}  {name}")),
                    );
                }
                lines
            }
        }
    }
}

/// The registers of a paused vCPU as lines.
#[must_use]
pub fn register_lines(registers: &VcpuRegisters) -> Vec<String> {
    let gpr = registers.gpr;
    let [es, cs, ss, ds, fs, gs] = registers.selectors;
    let [cr0, cr2, cr3, cr4] = registers.cr;
    let state = if registers.halted {
        "halted (HLT)"
    } else {
        "paused"
    };
    vec![
        format!("vCPU registers: {state}, CPL {}", registers.cpl),
        String::new(),
        format!(
            "EAX {:08x}  EBX {:08x}  ECX {:08x}  EDX {:08x}",
            gpr[0], gpr[3], gpr[1], gpr[2]
        ),
        format!(
            "ESI {:08x}  EDI {:08x}  EBP {:08x}  ESP {:08x}",
            gpr[6], gpr[7], gpr[5], gpr[4]
        ),
        format!(
            "EIP {:08x}  EFLAGS {:08x} ({})",
            registers.eip,
            registers.eflags,
            flag_names(registers.eflags)
        ),
        format!("CS {cs:04x}  SS {ss:04x}  DS {ds:04x}  ES {es:04x}  FS {fs:04x}  GS {gs:04x}"),
        format!("CR0 {cr0:08x}  CR2 {cr2:08x}  CR3 {cr3:08x}  CR4 {cr4:08x}"),
        String::new(),
        "any key closes this; C-a m p resumes".to_string(),
    ]
}

fn flag_names(eflags: u32) -> String {
    let names = [
        (0, "CF"),
        (2, "PF"),
        (4, "AF"),
        (6, "ZF"),
        (7, "SF"),
        (8, "TF"),
        (9, "IF"),
        (10, "DF"),
        (11, "OF"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| eflags & (1 << bit) != 0)
        .map(|(_, name)| *name)
        .collect();
    format!("{} IOPL {}", set.join(" "), (eflags >> 12) & 3)
}

/// Per-second rates of the counters, over the last second or more.
#[derive(Clone, Debug, Default)]
pub struct Rates {
    /// The counters at the start of the window.
    since: Option<(Instant, Vec<u64>)>,
    /// The last rates computed.
    per_second: Vec<f64>,
}

impl Rates {
    /// Takes a frame's counters into the rates.
    pub fn update(&mut self, at: Instant, counters: &[u64]) {
        match &self.since {
            None => self.since = Some((at, counters.to_vec())),
            Some((start, old)) => {
                let seconds = at.saturating_duration_since(*start).as_secs_f64();
                if seconds >= 1.0 {
                    #[allow(clippy::cast_precision_loss)] // a rate
                    {
                        self.per_second = counters
                            .iter()
                            .zip(old)
                            .map(|(new, old)| new.saturating_sub(*old) as f64 / seconds)
                            .collect();
                    }
                    self.since = Some((at, counters.to_vec()));
                }
            }
        }
    }

    /// The rate of `counter` (0 before a second has passed).
    #[must_use]
    pub fn of(&self, counter: Counter) -> f64 {
        self.per_second.get(counter.slot()).copied().unwrap_or(0.0)
    }
}

/// A number in a few characters: 950, 12.3k, 4.5M.
#[must_use]
pub fn short(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.1}M", value / 1e6)
    } else if value >= 1e4 {
        format!("{:.0}k", value / 1e3)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

/// The status line: what the vCPU does, traps per second by kind,
/// instructions interpreted, CR3 loads and exits per second.
#[must_use]
pub fn status_line(frame: Option<&Frame>, ui: &Ui, rates: &Rates) -> String {
    let state = match frame {
        Some(frame) if frame.paused.is_some() => "PAUSED",
        Some(frame) if frame.pausing => "pausing",
        Some(_) => "running",
        None => "starting",
    };
    let traps = rates.of(Counter::Traps);
    let int3 = rates.of(Counter::SoftwareBreakpoints) + rates.of(Counter::SplitTraps);
    let interpreted = rates.of(Counter::FastInstructions) + rates.of(Counter::Emulated);
    let screen = match frame.map(|frame| frame.layout.content) {
        Some(Content::Graphics) => " | graphics mode: not shown",
        Some(Content::Blank) => " | screen blanked",
        _ => "",
    };
    let menu = if ui.overlay == Overlay::None {
        " | C-a m menu"
    } else {
        ""
    };
    // Most telling first: a narrow terminal cuts the end.
    format!(
        "btvmm {state}{menu}{screen} | traps/s {} (int3 {} #PF {} #GP {} sys {} #DB {} kick {}) | interp/s {} | CR3/s {} | exits/s {}",
        short(traps),
        short(int3),
        short(rates.of(Counter::PageFaults)),
        short(rates.of(Counter::GeneralProtection)),
        short(rates.of(Counter::SystemCalls)),
        short(rates.of(Counter::BreakpointHits) + rates.of(Counter::SingleSteps)),
        short(rates.of(Counter::Kicks)),
        short(interpreted),
        short(rates.of(Counter::Cr3Loads)),
        short(rates.of(Counter::Exits)),
    )
}

/// Code page 437, the VGA's character set, from 0x80 up.
const CP437_HIGH: &str = "ÇüéâäàåçêëèïîìÄÅÉæÆôöòûùÿÖÜ¢£¥₧ƒáíóúñÑªº¿⌐¬½¼¡«»░▒▓│┤╡╢╖╕╣║╗╝╜╛┐└┴┬├─┼╞╟╚╔╩╦╠═╬╧╨╤╥╙╘╒╓╫╪┘┌█▄▌▐▀αßΓπΣσµτΦΘΩδ∞φε∩≡±≥≤⌠⌡÷≈°∙·√ⁿ²■\u{a0}";
/// Its glyphs for 0x01-0x1F (0x00 is blank).
const CP437_LOW: &str = "☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼";

/// The character a VGA cell's byte shows, in Unicode (or ASCII only when
/// the terminal cannot show more).
#[must_use]
pub fn vga_char(byte: u8, unicode: bool) -> char {
    match byte {
        0 => ' ',
        0x20..=0x7e => char::from(byte),
        _ if !unicode => match byte {
            0xb3 | 0xba => '|',
            0xc4 | 0xcd => '-',
            0xb4..=0xb9 | 0xbb..=0xc3 | 0xc5..=0xcc | 0xce..=0xda => '+',
            0xb0..=0xb2 | 0xdb..=0xdf => '#',
            _ => '?',
        },
        0x7f => '⌂',
        0x01..=0x1f => CP437_LOW.chars().nth(usize::from(byte) - 1).unwrap_or('?'),
        _ => CP437_HIGH
            .chars()
            .nth(usize::from(byte) - 0x80)
            .unwrap_or('?'),
    }
}

/// Whether the terminal's locale is UTF-8 (ncurses prints UTF-8 then).
fn locale_is_utf8() -> bool {
    ["LC_ALL", "LC_CTYPE", "LANG"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|value| !value.is_empty()))
        .is_some_and(|value| {
            let value = value.to_ascii_lowercase();
            value.contains("utf-8") || value.contains("utf8")
        })
}

/// Set while curses owns the terminal, for [`restore_terminal`].
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// Gives the terminal back if the display has it (the panic hook's path;
/// the display thread does the same when it ends).
pub fn restore_terminal() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        pancurses::endwin();
    }
}

/// The display thread and its two directions.
pub struct Display {
    events: Receiver<DisplayEvent>,
    frame: Arc<Mutex<Option<Frame>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Display {
    /// Takes the terminal (standard input and output must be one) and
    /// starts the display thread; `wake` is called after each event.
    pub fn start(wake: impl Fn() + Send + 'static) -> Result<Self, LoaderError> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
            return Err(LoaderError::Option(
                "--display curses needs a terminal on standard input and output".into(),
            ));
        }
        let term = std::env::var("TERM").unwrap_or_default();
        if term.is_empty() || term == "dumb" {
            return Err(LoaderError::Option(
                "--display curses needs a terminal type that can address the screen (TERM)".into(),
            ));
        }
        // ncurses would end the process with its own message otherwise.
        if !terminfo_entry_exists(&term) {
            return Err(LoaderError::Option(format!(
                "--display curses: no terminfo entry for the terminal type TERM={term}"
            )));
        }
        let (sender, events) = crossbeam_channel::unbounded();
        let frame = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (started, start) = crossbeam_channel::bounded(1);
        let thread = {
            let frame = Arc::clone(&frame);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("display".into())
                .spawn(move || {
                    let window = open_terminal();
                    let _ = started.send(());
                    run_display(&window, &sender, &wake, &frame, &stop);
                    restore_terminal();
                })
                .map_err(|error| LoaderError::Option(format!("the display thread: {error}")))?
        };
        // The terminal is set up (terminfo read, signal handlers in place)
        // before btvmm confines itself.
        let _ = start.recv();
        Ok(Self {
            events,
            frame,
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves `frame` for the display thread (replacing one not drawn
    /// yet).
    pub fn show(&self, frame: Frame) {
        if let Ok(mut slot) = self.frame.lock() {
            *slot = Some(frame);
        }
    }

    /// The events since the last call.
    #[must_use]
    pub fn take_events(&self) -> Vec<DisplayEvent> {
        self.events.try_iter().collect()
    }

    /// Waits up to `timeout` for an event (while the vCPU is paused the
    /// host loop has no exits to wait for).
    #[must_use]
    pub fn wait_event(&self, timeout: Duration) -> Option<DisplayEvent> {
        self.events.recv_timeout(timeout).ok()
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        restore_terminal();
    }
}

/// Whether ncurses will find a terminfo entry for `term`, looking where
/// terminfo(5) says it does: $TERMINFO, ~/.terminfo, $TERMINFO_DIRS, then
/// the system directories, each under the name's first letter (or its
/// hexadecimal code).
fn terminfo_entry_exists(term: &str) -> bool {
    let Some(first) = term.chars().next() else {
        return false;
    };
    if term.contains('/') {
        return false;
    }
    let mut directories: Vec<std::path::PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("TERMINFO") {
        directories.push(dir.into());
    }
    if let Some(home) = std::env::var_os("HOME") {
        directories.push(std::path::Path::new(&home).join(".terminfo"));
    }
    if let Some(dirs) = std::env::var_os("TERMINFO_DIRS") {
        directories.extend(std::env::split_paths(&dirs));
    }
    directories.extend(
        ["/etc/terminfo", "/lib/terminfo", "/usr/share/terminfo"]
            .iter()
            .map(std::path::PathBuf::from),
    );
    let hex = format!("{:x}", u32::from(first));
    directories.iter().any(|dir| {
        dir.join(first.to_string()).join(term).is_file() || dir.join(&hex).join(term).is_file()
    })
}

/// ncurses on the terminal: raw keys (Ctrl-C and Ctrl-Z go to the guest),
/// no echo, function keys decoded, colours when the terminal has them.
fn open_terminal() -> pancurses::Window {
    let window = pancurses::initscr();
    ACTIVE.store(true, Ordering::SeqCst);
    pancurses::raw();
    pancurses::noecho();
    pancurses::nonl();
    window.keypad(true);
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)] // 50 ms
    window.timeout(FRAME_INTERVAL.as_millis() as i32);
    if pancurses::has_colors() {
        pancurses::start_color();
        for (foreground, &foreground_color) in (0i16..).zip(&CURSES_COLORS) {
            for (background, &background_color) in (0i16..).zip(&CURSES_COLORS) {
                pancurses::init_pair(
                    color_pair(foreground, background),
                    foreground_color,
                    background_color,
                );
            }
        }
    }
    window
}

/// The curses colour of each of the 8 CGA base colours (CGA orders blue
/// first, curses red first).
const CURSES_COLORS: [i16; 8] = [
    pancurses::COLOR_BLACK,
    pancurses::COLOR_BLUE,
    pancurses::COLOR_GREEN,
    pancurses::COLOR_CYAN,
    pancurses::COLOR_RED,
    pancurses::COLOR_MAGENTA,
    pancurses::COLOR_YELLOW,
    pancurses::COLOR_WHITE,
];

/// The colour pair of a foreground and background (0-7 each); pair 0 is
/// the terminal's default and left alone.
fn color_pair(foreground: i16, background: i16) -> i16 {
    1 + foreground * 8 + background
}

fn run_display(
    window: &pancurses::Window,
    sender: &Sender<DisplayEvent>,
    wake: &dyn Fn(),
    slot: &Mutex<Option<Frame>>,
    stop: &AtomicBool,
) {
    let unicode = locale_is_utf8();
    let colors = pancurses::has_colors() && pancurses::COLOR_PAIRS() > 64;
    let mut ui = Ui::new();
    let mut rates = Rates::default();
    let mut frame: Option<Frame> = None;
    let mut dirty = true;
    while !stop.load(Ordering::SeqCst) {
        if let Some(new) = slot.lock().ok().and_then(|mut slot| slot.take()) {
            rates.update(new.at, &new.counters);
            frame = Some(new);
            dirty = true;
        }
        if dirty {
            draw(window, frame.as_ref(), &ui, &rates, unicode, colors);
            dirty = false;
        }
        // Waits up to FRAME_INTERVAL.
        let Some(input) = window.getch() else {
            continue;
        };
        let Some(key) = terminal_key(&input) else {
            continue;
        };
        if key == TerminalKey::Resize {
            pancurses::resize_term(0, 0);
        }
        let overlay = ui.overlay;
        let events = ui.key(key);
        dirty |= overlay != ui.overlay || key == TerminalKey::Resize || !events.is_empty();
        for event in events {
            if sender.send(event).is_err() {
                return;
            }
        }
        wake();
    }
}

/// A curses input as a terminal key (None: one btvmm does not use).
fn terminal_key(input: &pancurses::Input) -> Option<TerminalKey> {
    use pancurses::Input;
    let named = |key| Some(TerminalKey::Named(key, false));
    let shifted = |key| Some(TerminalKey::Named(key, true));
    match input {
        Input::Character(ch) => Some(TerminalKey::Char(*ch)),
        Input::KeyResize => Some(TerminalKey::Resize),
        Input::KeyUp => named(Key::Up),
        Input::KeyDown => named(Key::Down),
        Input::KeyLeft => named(Key::Left),
        Input::KeyRight => named(Key::Right),
        Input::KeySLeft => shifted(Key::Left),
        Input::KeySRight => shifted(Key::Right),
        Input::KeySR => shifted(Key::Up),
        Input::KeySF => shifted(Key::Down),
        Input::KeyHome => named(Key::Home),
        Input::KeyEnd => named(Key::End),
        Input::KeySHome => shifted(Key::Home),
        Input::KeySEnd => shifted(Key::End),
        Input::KeyPPage => named(Key::PageUp),
        Input::KeyNPage => named(Key::PageDown),
        Input::KeyIC => named(Key::Insert),
        Input::KeyDC => named(Key::Delete),
        Input::KeySDC => shifted(Key::Delete),
        Input::KeyBackspace => named(Key::Backspace),
        Input::KeyEnter => named(Key::Enter),
        Input::KeyBTab => shifted(Key::Tab),
        Input::KeyF1 => named(Key::F1),
        Input::KeyF2 => named(Key::F2),
        Input::KeyF3 => named(Key::F3),
        Input::KeyF4 => named(Key::F4),
        Input::KeyF5 => named(Key::F5),
        Input::KeyF6 => named(Key::F6),
        Input::KeyF7 => named(Key::F7),
        Input::KeyF8 => named(Key::F8),
        Input::KeyF9 => named(Key::F9),
        Input::KeyF10 => named(Key::F10),
        Input::KeyF11 => named(Key::F11),
        Input::KeyF12 => named(Key::F12),
        _ => None,
    }
}

/// Draws the frame, the overlay and the status line.
fn draw(
    window: &pancurses::Window,
    frame: Option<&Frame>,
    ui: &Ui,
    rates: &Rates,
    unicode: bool,
    colors: bool,
) {
    let (height, width) = window.get_max_yx();
    window.erase();
    let screen_rows = height.saturating_sub(1).max(0);
    if let Some(frame) = frame.filter(|frame| frame.layout.content == Content::Text) {
        draw_text(window, frame, screen_rows, width, unicode, colors);
    }
    let overlay = ui.overlay_lines(frame);
    if !overlay.is_empty() {
        draw_overlay(window, &overlay, screen_rows, width);
    }
    window.attrset(pancurses::A_REVERSE);
    let status = status_line(frame, ui, rates);
    window.mvaddstr(height - 1, 0, fit(&status, width));
    window.attrset(pancurses::A_NORMAL);
    match frame.and_then(|frame| frame.layout.cursor.filter(|_| overlay.is_empty())) {
        Some(cursor) if i32::from(cursor.row) < screen_rows && i32::from(cursor.column) < width => {
            let block = cursor.last_line.saturating_sub(cursor.first_line) >= 4;
            pancurses::curs_set(if block { 2 } else { 1 });
            window.mv(i32::from(cursor.row), i32::from(cursor.column));
        }
        _ => {
            pancurses::curs_set(0);
        }
    }
    window.refresh();
}

/// `text` cut to `width` characters.
fn fit(text: &str, width: i32) -> String {
    text.chars()
        .take(usize::try_from(width).unwrap_or(0))
        .collect()
}

fn draw_text(
    window: &pancurses::Window,
    frame: &Frame,
    screen_rows: i32,
    width: i32,
    unicode: bool,
    colors: bool,
) {
    let columns = usize::from(frame.layout.columns);
    for (row, cells) in frame.cells.chunks(columns.max(1)).enumerate() {
        let Ok(y) = i32::try_from(row) else {
            break;
        };
        if y >= screen_rows {
            break;
        }
        // Runs of one attribute, each drawn with one call.
        let mut x = 0;
        let mut run = String::new();
        let mut run_attribute = None;
        let shown = cells.iter().take(usize::try_from(width).unwrap_or(0));
        for &cell in shown {
            let [ch, attribute] = cell.to_le_bytes();
            if run_attribute != Some(attribute) {
                if let Some(previous) = run_attribute {
                    set_attribute(window, frame, previous, colors);
                    window.mvaddstr(y, x, &run);
                    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
                    {
                        x += run.chars().count() as i32;
                    }
                    run.clear();
                }
                run_attribute = Some(attribute);
            }
            run.push(vga_char(ch, unicode));
        }
        if let Some(attribute) = run_attribute {
            set_attribute(window, frame, attribute, colors);
            window.mvaddstr(y, x, &run);
        }
    }
    window.attrset(pancurses::A_NORMAL);
}

fn set_attribute(window: &pancurses::Window, frame: &Frame, attribute: u8, colors: bool) {
    let foreground = frame.palette[usize::from(attribute & 0x0f)];
    let background_index = if frame.layout.blink {
        attribute >> 4 & 0x07
    } else {
        attribute >> 4
    };
    let background = frame.palette[usize::from(background_index)];
    let mut attributes = pancurses::A_NORMAL;
    if foreground & 0x08 != 0 {
        attributes |= pancurses::A_BOLD;
    }
    if frame.layout.blink && attribute & 0x80 != 0 {
        attributes |= pancurses::A_BLINK;
    }
    if colors {
        attributes |= pancurses::COLOR_PAIR(pancurses::chtype::from(
            color_pair(i16::from(foreground & 7), i16::from(background & 7)).unsigned_abs(),
        ));
    } else if background & 7 != 0 && foreground & 7 == 0 {
        // Dark on light, without colours: the cursor-like reverse.
        attributes |= pancurses::A_REVERSE;
    }
    window.attrset(attributes);
}

fn draw_overlay(window: &pancurses::Window, lines: &[String], screen_rows: i32, width: i32) {
    let inner = lines
        .iter()
        .map(|line| line.chars().count())
        .max()
        .unwrap_or(0);
    let box_width = i32::try_from(inner + 4).unwrap_or(width).min(width);
    let box_height = i32::try_from(lines.len() + 2)
        .unwrap_or(screen_rows)
        .min(screen_rows);
    let top = (screen_rows - box_height).max(0) / 2;
    let left = (width - box_width).max(0) / 2;
    window.attrset(pancurses::A_REVERSE);
    for y in 0..box_height {
        let text = match y {
            0 => String::new(),
            _ => lines
                .get(usize::try_from(y - 1).unwrap_or(usize::MAX))
                .cloned()
                .unwrap_or_default(),
        };
        let padded = format!("  {text:<inner$}  ");
        window.mvaddstr(top + y, left, fit(&padded, box_width));
    }
    window.attrset(pancurses::A_NORMAL);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(ui: &mut Ui, text: &str) -> Vec<DisplayEvent> {
        text.chars()
            .flat_map(|ch| ui.key(TerminalKey::Char(ch)))
            .collect()
    }

    #[test]
    fn typed_characters_become_keystrokes() {
        let mut ui = Ui::new();
        let events = chars(&mut ui, "ls\r");
        assert_eq!(
            events,
            [
                DisplayEvent::Key(Keystroke::plain(Key::L)),
                DisplayEvent::Key(Keystroke::plain(Key::S)),
                DisplayEvent::Key(Keystroke::plain(Key::Enter)),
            ]
        );
        assert_eq!(
            ui.key(TerminalKey::Named(Key::Left, false)),
            [DisplayEvent::Key(Keystroke::plain(Key::Left))]
        );
        // Ctrl-C goes to the guest.
        assert_eq!(
            chars(&mut ui, "\u{3}"),
            [DisplayEvent::Key(Keystroke::new(Key::C, Modifiers::CTRL))]
        );
    }

    #[test]
    fn ctrl_a_keys_and_the_menu() {
        let mut ui = Ui::new();
        assert_eq!(chars(&mut ui, "\u{1}x"), [DisplayEvent::Quit]);
        assert_eq!(
            chars(&mut ui, "\u{1}\u{1}"),
            [DisplayEvent::Key(Keystroke::new(Key::A, Modifiers::CTRL))]
        );
        // The menu: keys no longer reach the guest.
        assert!(chars(&mut ui, "\u{1}m").is_empty());
        assert_eq!(ui.overlay, Overlay::Menu);
        assert!(
            ui.overlay_lines(None)
                .iter()
                .any(|line| line.contains("pause"))
        );
        assert!(chars(&mut ui, "z").is_empty());
        assert_eq!(chars(&mut ui, "p"), [DisplayEvent::Pause]);
        assert_eq!(ui.overlay, Overlay::None);
        assert!(ui.pause_asked);
        // Registers of the paused vCPU: no second pause.
        assert!(chars(&mut ui, "\u{1}mr").is_empty());
        assert_eq!(ui.overlay, Overlay::Registers);
        assert!(chars(&mut ui, " ").is_empty(), "any key closes the panel");
        assert_eq!(ui.overlay, Overlay::None);
        assert_eq!(chars(&mut ui, "\u{1}mp"), [DisplayEvent::Resume]);
        // Registers while running pause first.
        assert_eq!(chars(&mut ui, "\u{1}mr"), [DisplayEvent::Pause]);
        assert_eq!(chars(&mut ui, "\u{1b}\u{1}mp"), [DisplayEvent::Resume]);
        assert_eq!(
            chars(&mut ui, "\u{1}md"),
            [DisplayEvent::Key(Keystroke::CTRL_ALT_DELETE)]
        );
        assert_eq!(chars(&mut ui, "\u{1}mq"), [DisplayEvent::Quit]);
        // Escape closes the menu.
        chars(&mut ui, "\u{1}m\u{1b}");
        assert_eq!(ui.overlay, Overlay::None);
    }

    fn frame(counters: Vec<u64>, at: Instant) -> Frame {
        Frame {
            layout: devices::vga::Vga::new().text_layout(),
            cells: vec![0x0720; 80 * 25],
            palette: std::array::from_fn(|color| u8::try_from(color).unwrap_or(0)),
            counters,
            paused: None,
            pausing: false,
            at,
        }
    }

    #[test]
    fn the_status_line_shows_rates() {
        let start = Instant::now();
        let mut counters = vec![0u64; 128];
        let mut rates = Rates::default();
        rates.update(start, &counters);
        counters[Counter::Traps.slot()] = 2000;
        counters[Counter::SoftwareBreakpoints.slot()] = 1500;
        counters[Counter::Cr3Loads.slot()] = 40;
        counters[Counter::FastInstructions.slot()] = 3_000_000;
        let later = start + Duration::from_secs(2);
        rates.update(later, &counters);
        let frame = frame(counters, later);
        let line = status_line(Some(&frame), &Ui::new(), &rates);
        assert!(line.starts_with("btvmm running"), "{line}");
        assert!(line.contains("traps/s 1.0k (int3 750 "), "{line}");
        assert!(line.contains("interp/s 1.5M"), "{line}");
        assert!(line.contains("CR3/s 20"), "{line}");
        assert!(line.contains("C-a m menu"), "{line}");
        let paused = Frame {
            paused: Some(VcpuRegisters::default()),
            ..frame
        };
        assert!(status_line(Some(&paused), &Ui::new(), &rates).starts_with("btvmm PAUSED"));
    }

    #[test]
    fn registers_show_as_the_guest_sees_them() {
        let registers = VcpuRegisters {
            gpr: [1, 2, 3, 4, 0xc1ff_fe00, 6, 7, 8],
            eip: 0xc10a_2b3c,
            eflags: 0x246,
            selectors: [0x7b, 0x60, 0x68, 0x7b, 0xd8, 0],
            cr: [0x8005_003b, 0, 0x01c0_4000, 0x690],
            cpl: 0,
            halted: false,
        };
        let text = register_lines(&registers).join("\n");
        assert!(text.contains("EAX 00000001  EBX 00000004"), "{text}");
        assert!(text.contains("ESP c1fffe00"), "{text}");
        assert!(
            text.contains("EIP c10a2b3c  EFLAGS 00000246 (PF ZF IF IOPL 0)"),
            "{text}"
        );
        assert!(text.contains("CS 0060"), "{text}");
        assert!(text.contains("CR3 01c04000"), "{text}");
    }

    #[test]
    fn vga_characters() {
        assert_eq!(vga_char(b'A', true), 'A');
        assert_eq!(vga_char(0, true), ' ');
        assert_eq!(vga_char(0xc4, true), '─');
        assert_eq!(vga_char(0xdb, true), '█');
        assert_eq!(vga_char(0xff, true), '\u{a0}');
        assert_eq!(vga_char(0x01, true), '☺');
        assert_eq!(vga_char(0x1f, true), '▼');
        assert_eq!(vga_char(0xc4, false), '-');
        assert_eq!(vga_char(0x82, false), '?');
        assert_eq!(CP437_HIGH.chars().count(), 128);
        assert_eq!(CP437_LOW.chars().count(), 31);
    }

    #[test]
    fn terminal_types_are_looked_up_in_terminfo() {
        // Debian's ncurses-base has both; the display test runs in tmux.
        assert!(terminfo_entry_exists("xterm") && terminfo_entry_exists("linux"));
        assert!(!terminfo_entry_exists("no-such-terminal-type"));
        assert!(!terminfo_entry_exists("../x/xterm"));
        assert!(!terminfo_entry_exists(""));
    }

    #[test]
    fn numbers_are_short() {
        assert_eq!(short(950.4), "950");
        assert_eq!(short(1234.0), "1.2k");
        assert_eq!(short(45_600.0), "46k");
        assert_eq!(short(4_500_000.0), "4.5M");
    }
}
