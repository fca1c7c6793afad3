//! What a host user types, as the key events of an AT keyboard with a US
//! layout: scan code set 2 bytes for [`crate::i8042::I8042::push_scancodes`].
//!
//! # The model
//!
//! A [`Key`] is a key position on the PC keyboard, not a character: the
//! guest's keymap decides what it types. Each key has a set 2 *make* code,
//! sent when it goes down, and a *break* code, sent when it comes up:
//!
//! - most keys: make `xx`, break `F0 xx`;
//! - the keys the 101-key keyboard added (right Ctrl and Alt, the cursor
//!   block, keypad Enter and /): make `E0 xx`, break `E0 F0 xx`.
//!
//! Set 2 is what the keyboard itself sends. The 8042 turns it into set 1
//! when its translation bit is set, which is how PC BIOSes and Linux run it;
//! that is the controller's job ([`crate::i8042::translate`]), so this module
//! only ever produces set 2.
//!
//! A [`Keystroke`] is one press and release of a key with modifiers held
//! around it: the modifiers go down (Ctrl, Alt, Shift, always the left-hand
//! keys), the key goes down and up, the modifiers come up in reverse order.
//! [`Keystroke::events`] lists these events; each is one whole event to push
//! with one `push_scancodes` call, since the keyboard takes an event whole
//! or not at all. The keyboard holds 16 bytes, so a host that types a lot
//! at once pushes events as the guest reads them; the longest keystroke
//! (three modifiers and an extended key) is 14 bytes.
//!
//! [`keystroke_for_char`] says which keystroke types an ASCII character on a
//! US keyboard, as Linux's default keymap reads it back, so text from the
//! host's terminal can be typed into the guest's console. Control
//! characters become the Ctrl combinations a terminal sends them for.
//! Escape sequences (the host's arrow keys as `ESC [ A`) are the caller's to
//! parse; this module sees one character at a time.
//!
//! Not modelled: Pause and Print Screen (sequences with fake Shift and Ctrl
//! codes, not one key), the ISO 102nd key and other layouts, characters
//! typed with the right Alt key, typematic repeat (a held host key arrives
//! as repeated characters, each its own keystroke).
//!
//! # Reference
//!
//! The set 2 codes are those of Linux's AT keyboard driver,
//! `drivers/input/keyboard/atkbd.c`, table `atkbd_set2_keycode` (indexed by
//! the set 2 code, plus 0x80 after an `E0` prefix; its values are Linux key
//! codes, which equal the set 1 codes of these keys). The tests check every
//! key against the well-known set 1 code through the 8042's own translation
//! table, every character against Linux's default US keymap
//! (`drivers/tty/vt/defkeymap.map`, rows `keycode N = plain shifted`, with N
//! the set 1 code), and the whole path through an [`crate::i8042::I8042`].

use crate::i8042::SET2_BREAK;

/// Prefix of the set 2 codes of the keys added by the 101-key keyboard.
const EXTENDED_PREFIX: u8 = 0xe0;

/// A key's set 2 code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Code {
    /// One byte.
    Plain(u8),
    /// The byte after an `E0` prefix.
    Extended(u8),
}

/// Defines [`Key`], its list of all keys and its set 2 codes from one
/// table, so no key can miss a code or be left out of the list.
macro_rules! keys {
    ($($name:ident ($label:literal) = $kind:ident($code:literal),)*) => {
        /// A key of the PC keyboard: the key's position, not the character
        /// it types (that is the guest keymap's business). Named as on a
        /// US keyboard.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Key {
            $(
                #[doc = concat!("The ", $label, " key.")]
                $name,
            )*
        }

        impl Key {
            /// Every key, for hosts that map key names and for tests.
            pub const ALL: &'static [Key] = &[$(Key::$name,)*];

            /// The key's set 2 code.
            const fn code(self) -> Code {
                match self {
                    $(Key::$name => Code::$kind($code),)*
                }
            }
        }
    };
}

keys! {
    A ("A") = Plain(0x1c),
    B ("B") = Plain(0x32),
    C ("C") = Plain(0x21),
    D ("D") = Plain(0x23),
    E ("E") = Plain(0x24),
    F ("F") = Plain(0x2b),
    G ("G") = Plain(0x34),
    H ("H") = Plain(0x33),
    I ("I") = Plain(0x43),
    J ("J") = Plain(0x3b),
    K ("K") = Plain(0x42),
    L ("L") = Plain(0x4b),
    M ("M") = Plain(0x3a),
    N ("N") = Plain(0x31),
    O ("O") = Plain(0x44),
    P ("P") = Plain(0x4d),
    Q ("Q") = Plain(0x15),
    R ("R") = Plain(0x2d),
    S ("S") = Plain(0x1b),
    T ("T") = Plain(0x2c),
    U ("U") = Plain(0x3c),
    V ("V") = Plain(0x2a),
    W ("W") = Plain(0x1d),
    X ("X") = Plain(0x22),
    Y ("Y") = Plain(0x35),
    Z ("Z") = Plain(0x1a),
    Digit0 ("top-row 0 )") = Plain(0x45),
    Digit1 ("top-row 1 !") = Plain(0x16),
    Digit2 ("top-row 2 @") = Plain(0x1e),
    Digit3 ("top-row 3 #") = Plain(0x26),
    Digit4 ("top-row 4 $") = Plain(0x25),
    Digit5 ("top-row 5 %") = Plain(0x2e),
    Digit6 ("top-row 6 ^") = Plain(0x36),
    Digit7 ("top-row 7 &") = Plain(0x3d),
    Digit8 ("top-row 8 *") = Plain(0x3e),
    Digit9 ("top-row 9 (") = Plain(0x46),
    Minus ("- _") = Plain(0x4e),
    Equals ("= +") = Plain(0x55),
    LeftBracket ("[ {") = Plain(0x54),
    RightBracket ("] }") = Plain(0x5b),
    Backslash ("\\ |") = Plain(0x5d),
    Semicolon ("; :") = Plain(0x4c),
    Apostrophe ("' \"") = Plain(0x52),
    Grave ("grave accent and tilde") = Plain(0x0e),
    Comma (", <") = Plain(0x41),
    Period (". >") = Plain(0x49),
    Slash ("/ ?") = Plain(0x4a),
    Space ("space bar") = Plain(0x29),
    Enter ("Enter") = Plain(0x5a),
    Backspace ("Backspace") = Plain(0x66),
    Tab ("Tab") = Plain(0x0d),
    Escape ("Esc") = Plain(0x76),
    CapsLock ("Caps Lock") = Plain(0x58),
    LeftShift ("left Shift") = Plain(0x12),
    RightShift ("right Shift") = Plain(0x59),
    LeftCtrl ("left Ctrl") = Plain(0x14),
    RightCtrl ("right Ctrl") = Extended(0x14),
    LeftAlt ("left Alt") = Plain(0x11),
    RightAlt ("right Alt (AltGr)") = Extended(0x11),
    LeftMeta ("left Windows (Meta)") = Extended(0x1f),
    RightMeta ("right Windows (Meta)") = Extended(0x27),
    Menu ("Menu (Compose)") = Extended(0x2f),
    F1 ("F1") = Plain(0x05),
    F2 ("F2") = Plain(0x06),
    F3 ("F3") = Plain(0x04),
    F4 ("F4") = Plain(0x0c),
    F5 ("F5") = Plain(0x03),
    F6 ("F6") = Plain(0x0b),
    F7 ("F7") = Plain(0x83),
    F8 ("F8") = Plain(0x0a),
    F9 ("F9") = Plain(0x01),
    F10 ("F10") = Plain(0x09),
    F11 ("F11") = Plain(0x78),
    F12 ("F12") = Plain(0x07),
    ScrollLock ("Scroll Lock") = Plain(0x7e),
    Insert ("Insert") = Extended(0x70),
    Delete ("Delete") = Extended(0x71),
    Home ("Home") = Extended(0x6c),
    End ("End") = Extended(0x69),
    PageUp ("Page Up") = Extended(0x7d),
    PageDown ("Page Down") = Extended(0x7a),
    Up ("cursor up") = Extended(0x75),
    Down ("cursor down") = Extended(0x72),
    Left ("cursor left") = Extended(0x6b),
    Right ("cursor right") = Extended(0x74),
    NumLock ("Num Lock") = Plain(0x77),
    KeypadDivide ("keypad /") = Extended(0x4a),
    KeypadMultiply ("keypad *") = Plain(0x7c),
    KeypadMinus ("keypad -") = Plain(0x7b),
    KeypadPlus ("keypad +") = Plain(0x79),
    KeypadEnter ("keypad Enter") = Extended(0x5a),
    KeypadPeriod ("keypad . Del") = Plain(0x71),
    Keypad0 ("keypad 0 Ins") = Plain(0x70),
    Keypad1 ("keypad 1 End") = Plain(0x69),
    Keypad2 ("keypad 2 Down") = Plain(0x72),
    Keypad3 ("keypad 3 PgDn") = Plain(0x7a),
    Keypad4 ("keypad 4 Left") = Plain(0x6b),
    Keypad5 ("keypad 5") = Plain(0x73),
    Keypad6 ("keypad 6 Right") = Plain(0x74),
    Keypad7 ("keypad 7 Home") = Plain(0x6c),
    Keypad8 ("keypad 8 Up") = Plain(0x75),
    Keypad9 ("keypad 9 PgUp") = Plain(0x7d),
}

impl Key {
    /// The set 2 bytes the keyboard sends when the key goes down: its code,
    /// after `E0` for an extended key.
    #[must_use]
    pub fn make(self) -> Vec<u8> {
        match self.code() {
            Code::Plain(code) => vec![code],
            Code::Extended(code) => vec![EXTENDED_PREFIX, code],
        }
    }

    /// The set 2 bytes the keyboard sends when the key comes up: `F0`
    /// before the code, and after the `E0` of an extended key (`E0 F0 xx`).
    #[must_use]
    pub fn break_code(self) -> Vec<u8> {
        match self.code() {
            Code::Plain(code) => vec![SET2_BREAK, code],
            Code::Extended(code) => vec![EXTENDED_PREFIX, SET2_BREAK, code],
        }
    }
}

/// The letter keys in alphabetical order.
const LETTERS: [Key; 26] = [
    Key::A,
    Key::B,
    Key::C,
    Key::D,
    Key::E,
    Key::F,
    Key::G,
    Key::H,
    Key::I,
    Key::J,
    Key::K,
    Key::L,
    Key::M,
    Key::N,
    Key::O,
    Key::P,
    Key::Q,
    Key::R,
    Key::S,
    Key::T,
    Key::U,
    Key::V,
    Key::W,
    Key::X,
    Key::Y,
    Key::Z,
];

/// The top-row digit keys, 0 to 9.
const DIGITS: [Key; 10] = [
    Key::Digit0,
    Key::Digit1,
    Key::Digit2,
    Key::Digit3,
    Key::Digit4,
    Key::Digit5,
    Key::Digit6,
    Key::Digit7,
    Key::Digit8,
    Key::Digit9,
];

/// The modifiers held down around one keystroke.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Modifiers {
    /// Shift (the left-hand key).
    pub shift: bool,
    /// Ctrl (the left-hand key).
    pub ctrl: bool,
    /// Alt (the left-hand key).
    pub alt: bool,
}

impl Modifiers {
    /// No modifier.
    pub const NONE: Modifiers = Modifiers {
        shift: false,
        ctrl: false,
        alt: false,
    };
    /// Shift alone.
    pub const SHIFT: Modifiers = Modifiers {
        shift: true,
        ctrl: false,
        alt: false,
    };
    /// Ctrl alone.
    pub const CTRL: Modifiers = Modifiers {
        shift: false,
        ctrl: true,
        alt: false,
    };

    /// The modifier keys held, in the order they go down.
    fn keys(self) -> impl DoubleEndedIterator<Item = Key> {
        [
            (self.ctrl, Key::LeftCtrl),
            (self.alt, Key::LeftAlt),
            (self.shift, Key::LeftShift),
        ]
        .into_iter()
        .filter_map(|(held, key)| held.then_some(key))
    }
}

/// One press and release of a key, with modifiers held around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Keystroke {
    /// The key pressed and released.
    pub key: Key,
    /// The modifiers held around it.
    pub modifiers: Modifiers,
}

impl Keystroke {
    /// Ctrl-Alt-Delete, the PC's reboot request: Linux's console and PC
    /// BIOSes act on it.
    pub const CTRL_ALT_DELETE: Keystroke = Keystroke {
        key: Key::Delete,
        modifiers: Modifiers {
            shift: false,
            ctrl: true,
            alt: true,
        },
    };

    /// `key` with `modifiers` held.
    #[must_use]
    pub const fn new(key: Key, modifiers: Modifiers) -> Self {
        Self { key, modifiers }
    }

    /// `key` alone.
    #[must_use]
    pub const fn plain(key: Key) -> Self {
        Self::new(key, Modifiers::NONE)
    }

    /// The key events in order, each one whole set 2 event for one
    /// [`crate::i8042::I8042::push_scancodes`] call: the modifiers' makes
    /// (Ctrl, Alt, Shift), the key's make and break, the modifiers' breaks
    /// in reverse order. A modifier that is the key itself (Shift with
    /// [`Modifiers::shift`]) is pressed once, not twice, so the guest never
    /// sees a key released twice.
    #[must_use]
    pub fn events(&self) -> Vec<Vec<u8>> {
        let key = self.key;
        let modifiers = || self.modifiers.keys().filter(move |&held| held != key);
        modifiers()
            .map(Key::make)
            .chain([key.make(), key.break_code()])
            .chain(modifiers().rev().map(Key::break_code))
            .collect()
    }
}

/// The keystroke that types `ch` on a US keyboard with Linux's default
/// keymap, or `None` for a character the keyboard cannot type (anything
/// outside ASCII).
///
/// - Printable ASCII: its key, with Shift for capitals and for
///   ``!@#$%^&*()_+{}|:"<>?~``.
/// - `'\n'` and `'\r'`: Enter; `'\t'`: Tab; ESC (0x1B): Esc.
/// - BS (0x08) and DEL (0x7F): Backspace. Terminals send either for their
///   Backspace key, and the user meant the key, not Ctrl-H.
/// - The other control characters, as a terminal sends them and Linux's
///   keymap gives them back: 0x01-0x1A Ctrl and the letter; NUL Ctrl-Space
///   (no Shift needed, unlike Ctrl-@); 0x1C Ctrl-\\, 0x1D Ctrl-], 0x1E Ctrl-6
///   (Ctrl-^ without its Shift) and 0x1F Ctrl-minus (Ctrl-_ likewise).
#[must_use]
pub fn keystroke_for_char(ch: char) -> Option<Keystroke> {
    let byte = u8::try_from(ch).ok().filter(u8::is_ascii)?;
    let (key, modifiers) = match byte {
        b'a'..=b'z' => (letter(byte - b'a')?, Modifiers::NONE),
        b'A'..=b'Z' => (letter(byte - b'A')?, Modifiers::SHIFT),
        b'0'..=b'9' => (*DIGITS.get(usize::from(byte - b'0'))?, Modifiers::NONE),
        b'\n' | b'\r' => (Key::Enter, Modifiers::NONE),
        b'\t' => (Key::Tab, Modifiers::NONE),
        0x08 | 0x7f => (Key::Backspace, Modifiers::NONE),
        0x1b => (Key::Escape, Modifiers::NONE),
        0x00 => (Key::Space, Modifiers::CTRL),
        // 0x01 is Ctrl-A, 0x1A Ctrl-Z.
        0x01..=0x1a => (letter(byte - 1)?, Modifiers::CTRL),
        0x1c => (Key::Backslash, Modifiers::CTRL),
        0x1d => (Key::RightBracket, Modifiers::CTRL),
        0x1e => (Key::Digit6, Modifiers::CTRL),
        0x1f => (Key::Minus, Modifiers::CTRL),
        _ => symbol(byte)?,
    };
    Some(Keystroke::new(key, modifiers))
}

/// Letter `index` (0 for A).
fn letter(index: u8) -> Option<Key> {
    LETTERS.get(usize::from(index)).copied()
}

/// The key and Shift state of a printable ASCII punctuation character.
fn symbol(byte: u8) -> Option<(Key, Modifiers)> {
    let unshifted = |key| Some((key, Modifiers::NONE));
    let shifted = |key| Some((key, Modifiers::SHIFT));
    match byte {
        b' ' => unshifted(Key::Space),
        b'-' => unshifted(Key::Minus),
        b'=' => unshifted(Key::Equals),
        b'[' => unshifted(Key::LeftBracket),
        b']' => unshifted(Key::RightBracket),
        b'\\' => unshifted(Key::Backslash),
        b';' => unshifted(Key::Semicolon),
        b'\'' => unshifted(Key::Apostrophe),
        b'`' => unshifted(Key::Grave),
        b',' => unshifted(Key::Comma),
        b'.' => unshifted(Key::Period),
        b'/' => unshifted(Key::Slash),
        b')' => shifted(Key::Digit0),
        b'!' => shifted(Key::Digit1),
        b'@' => shifted(Key::Digit2),
        b'#' => shifted(Key::Digit3),
        b'$' => shifted(Key::Digit4),
        b'%' => shifted(Key::Digit5),
        b'^' => shifted(Key::Digit6),
        b'&' => shifted(Key::Digit7),
        b'*' => shifted(Key::Digit8),
        b'(' => shifted(Key::Digit9),
        b'_' => shifted(Key::Minus),
        b'+' => shifted(Key::Equals),
        b'{' => shifted(Key::LeftBracket),
        b'}' => shifted(Key::RightBracket),
        b'|' => shifted(Key::Backslash),
        b':' => shifted(Key::Semicolon),
        b'"' => shifted(Key::Apostrophe),
        b'~' => shifted(Key::Grave),
        b'<' => shifted(Key::Comma),
        b'>' => shifted(Key::Period),
        b'?' => shifted(Key::Slash),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::i8042::{CB_XLATE, COMMAND_OFFSET, DATA_OFFSET, I8042, STATUS_OBF, translate};

    /// Every key's set 1 make code, from IBM's table (the codes Linux's key
    /// codes were numbered after), extended keys as `0xE0xx`. Stated
    /// independently of the set 2 table above.
    const SET1: &[(Key, u16)] = &[
        (Key::Escape, 0x01),
        (Key::Digit1, 0x02),
        (Key::Digit2, 0x03),
        (Key::Digit3, 0x04),
        (Key::Digit4, 0x05),
        (Key::Digit5, 0x06),
        (Key::Digit6, 0x07),
        (Key::Digit7, 0x08),
        (Key::Digit8, 0x09),
        (Key::Digit9, 0x0a),
        (Key::Digit0, 0x0b),
        (Key::Minus, 0x0c),
        (Key::Equals, 0x0d),
        (Key::Backspace, 0x0e),
        (Key::Tab, 0x0f),
        (Key::Q, 0x10),
        (Key::W, 0x11),
        (Key::E, 0x12),
        (Key::R, 0x13),
        (Key::T, 0x14),
        (Key::Y, 0x15),
        (Key::U, 0x16),
        (Key::I, 0x17),
        (Key::O, 0x18),
        (Key::P, 0x19),
        (Key::LeftBracket, 0x1a),
        (Key::RightBracket, 0x1b),
        (Key::Enter, 0x1c),
        (Key::LeftCtrl, 0x1d),
        (Key::A, 0x1e),
        (Key::S, 0x1f),
        (Key::D, 0x20),
        (Key::F, 0x21),
        (Key::G, 0x22),
        (Key::H, 0x23),
        (Key::J, 0x24),
        (Key::K, 0x25),
        (Key::L, 0x26),
        (Key::Semicolon, 0x27),
        (Key::Apostrophe, 0x28),
        (Key::Grave, 0x29),
        (Key::LeftShift, 0x2a),
        (Key::Backslash, 0x2b),
        (Key::Z, 0x2c),
        (Key::X, 0x2d),
        (Key::C, 0x2e),
        (Key::V, 0x2f),
        (Key::B, 0x30),
        (Key::N, 0x31),
        (Key::M, 0x32),
        (Key::Comma, 0x33),
        (Key::Period, 0x34),
        (Key::Slash, 0x35),
        (Key::RightShift, 0x36),
        (Key::KeypadMultiply, 0x37),
        (Key::LeftAlt, 0x38),
        (Key::Space, 0x39),
        (Key::CapsLock, 0x3a),
        (Key::F1, 0x3b),
        (Key::F2, 0x3c),
        (Key::F3, 0x3d),
        (Key::F4, 0x3e),
        (Key::F5, 0x3f),
        (Key::F6, 0x40),
        (Key::F7, 0x41),
        (Key::F8, 0x42),
        (Key::F9, 0x43),
        (Key::F10, 0x44),
        (Key::NumLock, 0x45),
        (Key::ScrollLock, 0x46),
        (Key::Keypad7, 0x47),
        (Key::Keypad8, 0x48),
        (Key::Keypad9, 0x49),
        (Key::KeypadMinus, 0x4a),
        (Key::Keypad4, 0x4b),
        (Key::Keypad5, 0x4c),
        (Key::Keypad6, 0x4d),
        (Key::KeypadPlus, 0x4e),
        (Key::Keypad1, 0x4f),
        (Key::Keypad2, 0x50),
        (Key::Keypad3, 0x51),
        (Key::Keypad0, 0x52),
        (Key::KeypadPeriod, 0x53),
        (Key::F11, 0x57),
        (Key::F12, 0x58),
        (Key::KeypadEnter, 0xe01c),
        (Key::RightCtrl, 0xe01d),
        (Key::KeypadDivide, 0xe035),
        (Key::RightAlt, 0xe038),
        (Key::Home, 0xe047),
        (Key::Up, 0xe048),
        (Key::PageUp, 0xe049),
        (Key::Left, 0xe04b),
        (Key::Right, 0xe04d),
        (Key::End, 0xe04f),
        (Key::Down, 0xe050),
        (Key::PageDown, 0xe051),
        (Key::Insert, 0xe052),
        (Key::Delete, 0xe053),
        (Key::LeftMeta, 0xe05b),
        (Key::RightMeta, 0xe05c),
        (Key::Menu, 0xe05d),
    ];

    /// Linux's default US keymap (`defkeymap.map`) for the printable keys:
    /// set 1 code (Linux key code), then the plain and the shifted
    /// character.
    const US_KEYMAP: &[(u16, char, char)] = &[
        (0x02, '1', '!'),
        (0x03, '2', '@'),
        (0x04, '3', '#'),
        (0x05, '4', '$'),
        (0x06, '5', '%'),
        (0x07, '6', '^'),
        (0x08, '7', '&'),
        (0x09, '8', '*'),
        (0x0a, '9', '('),
        (0x0b, '0', ')'),
        (0x0c, '-', '_'),
        (0x0d, '=', '+'),
        (0x10, 'q', 'Q'),
        (0x11, 'w', 'W'),
        (0x12, 'e', 'E'),
        (0x13, 'r', 'R'),
        (0x14, 't', 'T'),
        (0x15, 'y', 'Y'),
        (0x16, 'u', 'U'),
        (0x17, 'i', 'I'),
        (0x18, 'o', 'O'),
        (0x19, 'p', 'P'),
        (0x1a, '[', '{'),
        (0x1b, ']', '}'),
        (0x1e, 'a', 'A'),
        (0x1f, 's', 'S'),
        (0x20, 'd', 'D'),
        (0x21, 'f', 'F'),
        (0x22, 'g', 'G'),
        (0x23, 'h', 'H'),
        (0x24, 'j', 'J'),
        (0x25, 'k', 'K'),
        (0x26, 'l', 'L'),
        (0x27, ';', ':'),
        (0x28, '\'', '"'),
        (0x29, '`', '~'),
        (0x2b, '\\', '|'),
        (0x2c, 'z', 'Z'),
        (0x2d, 'x', 'X'),
        (0x2e, 'c', 'C'),
        (0x2f, 'v', 'V'),
        (0x30, 'b', 'B'),
        (0x31, 'n', 'N'),
        (0x32, 'm', 'M'),
        (0x33, ',', '<'),
        (0x34, '.', '>'),
        (0x35, '/', '?'),
        (0x39, ' ', ' '),
    ];

    /// A set 2 make code through the 8042's translation table, as a set 1
    /// code in the form of [`SET1`].
    fn translated_make(key: Key) -> u16 {
        key.make()
            .iter()
            .fold(0, |code, &byte| code << 8 | u16::from(translate(byte)))
    }

    fn set1_code(key: Key) -> u16 {
        SET1.iter()
            .find_map(|&(k, code)| (k == key).then_some(code))
            .unwrap_or_else(|| panic!("{key:?} missing from the set 1 table"))
    }

    /// The bytes the guest reads from port 0x60 while the status port says
    /// the output buffer is full.
    fn read_all(kbc: &mut I8042) -> Vec<u8> {
        let mut bytes = Vec::new();
        while kbc.read(COMMAND_OFFSET) & STATUS_OBF != 0 {
            bytes.push(kbc.read(DATA_OFFSET));
            assert!(bytes.len() <= 16, "the output buffer never empties");
        }
        bytes
    }

    #[test]
    fn keys_are_distinct() {
        let keys: HashSet<Key> = Key::ALL.iter().copied().collect();
        assert_eq!(keys.len(), Key::ALL.len());
        let makes: HashSet<Vec<u8>> = Key::ALL.iter().map(|key| key.make()).collect();
        assert_eq!(makes.len(), Key::ALL.len(), "two keys share a make code");
        assert_eq!(SET1.len(), Key::ALL.len());
    }

    #[test]
    fn set1_translation_of_every_make_code() {
        for &key in Key::ALL {
            assert_eq!(
                translated_make(key),
                set1_code(key),
                "{key:?}: set 2 {:02x?}",
                key.make()
            );
        }
        // The ones everybody knows, spelled out.
        assert_eq!(translated_make(Key::A), 0x1e);
        assert_eq!(translated_make(Key::Enter), 0x1c);
        assert_eq!(translated_make(Key::Escape), 0x01);
        assert_eq!(translated_make(Key::Space), 0x39);
        assert_eq!(translated_make(Key::Digit1), 0x02);
        assert_eq!(translated_make(Key::Up), 0xe048);
        assert_eq!(translated_make(Key::Delete), 0xe053);
        assert_eq!(translated_make(Key::F1), 0x3b);
        assert_eq!(translated_make(Key::F12), 0x58);
    }

    #[test]
    fn set2_codes_of_the_common_keys() {
        let expected: &[(Key, &[u8])] = &[
            (Key::A, &[0x1c]),
            (Key::Z, &[0x1a]),
            (Key::Digit1, &[0x16]),
            (Key::Enter, &[0x5a]),
            (Key::Space, &[0x29]),
            (Key::Backspace, &[0x66]),
            (Key::Tab, &[0x0d]),
            (Key::Escape, &[0x76]),
            (Key::CapsLock, &[0x58]),
            (Key::LeftShift, &[0x12]),
            (Key::RightShift, &[0x59]),
            (Key::LeftCtrl, &[0x14]),
            (Key::RightCtrl, &[0xe0, 0x14]),
            (Key::LeftAlt, &[0x11]),
            (Key::RightAlt, &[0xe0, 0x11]),
            (Key::F1, &[0x05]),
            (Key::F7, &[0x83]),
            (Key::F12, &[0x07]),
            (Key::Insert, &[0xe0, 0x70]),
            (Key::Delete, &[0xe0, 0x71]),
            (Key::Home, &[0xe0, 0x6c]),
            (Key::End, &[0xe0, 0x69]),
            (Key::PageUp, &[0xe0, 0x7d]),
            (Key::PageDown, &[0xe0, 0x7a]),
            (Key::Up, &[0xe0, 0x75]),
            (Key::Down, &[0xe0, 0x72]),
            (Key::Left, &[0xe0, 0x6b]),
            (Key::Right, &[0xe0, 0x74]),
        ];
        for &(key, make) in expected {
            assert_eq!(key.make(), make, "{key:?}");
        }
    }

    #[test]
    fn break_codes() {
        assert_eq!(Key::A.break_code(), [0xf0, 0x1c]);
        // Extended: F0 after the prefix, as the 8042's translation needs.
        assert_eq!(Key::Up.break_code(), [0xe0, 0xf0, 0x75]);
        assert_eq!(Key::RightCtrl.break_code(), [0xe0, 0xf0, 0x14]);
        for &key in Key::ALL {
            let make = key.make();
            let brk = key.break_code();
            let (code, prefix) = make.split_last().expect("a make code has a byte");
            assert_eq!(brk.len(), make.len() + 1, "{key:?}");
            assert!(brk.starts_with(prefix), "{key:?}");
            assert_eq!(brk[prefix.len()..], [SET2_BREAK, *code], "{key:?}");
        }
    }

    #[test]
    fn capital_a_is_shift_a() {
        assert_eq!(
            keystroke_for_char('A').expect("A types").events(),
            [vec![0x12], vec![0x1c], vec![0xf0, 0x1c], vec![0xf0, 0x12]]
        );
        assert_eq!(
            keystroke_for_char('a').expect("a types").events(),
            [vec![0x1c], vec![0xf0, 0x1c]]
        );
    }

    #[test]
    fn ctrl_c() {
        let keystroke = keystroke_for_char('\u{3}').expect("ETX types");
        assert_eq!(keystroke, Keystroke::new(Key::C, Modifiers::CTRL));
        assert_eq!(
            keystroke.events(),
            [vec![0x14], vec![0x21], vec![0xf0, 0x21], vec![0xf0, 0x14]]
        );
    }

    #[test]
    fn ctrl_alt_delete() {
        assert_eq!(
            Keystroke::CTRL_ALT_DELETE.events(),
            [
                vec![0x14],
                vec![0x11],
                vec![0xe0, 0x71],
                vec![0xe0, 0xf0, 0x71],
                vec![0xf0, 0x11],
                vec![0xf0, 0x14],
            ]
        );
    }

    #[test]
    fn modifiers_nest_and_the_key_itself_is_not_pressed_twice() {
        let all = Modifiers {
            shift: true,
            ctrl: true,
            alt: true,
        };
        let events = Keystroke::new(Key::Up, all).events();
        assert_eq!(
            events,
            [
                vec![0x14],
                vec![0x11],
                vec![0x12],
                vec![0xe0, 0x75],
                vec![0xe0, 0xf0, 0x75],
                vec![0xf0, 0x12],
                vec![0xf0, 0x11],
                vec![0xf0, 0x14],
            ]
        );
        // The longest keystroke fits the keyboard's 16-byte buffer.
        assert_eq!(events.iter().map(Vec::len).sum::<usize>(), 14);
        assert_eq!(
            Keystroke::new(Key::LeftShift, Modifiers::SHIFT).events(),
            [vec![0x12], vec![0xf0, 0x12]]
        );
    }

    #[test]
    fn every_printable_char_types_as_the_us_keymap_reads_it() {
        for ch in (b' '..=b'~').map(char::from) {
            let keystroke =
                keystroke_for_char(ch).unwrap_or_else(|| panic!("{ch:?} has no keystroke"));
            assert!(
                !keystroke.modifiers.ctrl && !keystroke.modifiers.alt,
                "{ch:?}"
            );
            let code = translated_make(keystroke.key);
            let &(_, plain, shifted) = US_KEYMAP
                .iter()
                .find(|&&(c, _, _)| c == code)
                .unwrap_or_else(|| panic!("{ch:?}: set 1 {code:#x} not in the keymap"));
            let typed = if keystroke.modifiers.shift {
                shifted
            } else {
                plain
            };
            assert_eq!(typed, ch, "{keystroke:?}");
            // Shift only where the plain key would type something else.
            assert_eq!(keystroke.modifiers.shift, plain != ch, "{ch:?}");
        }
    }

    #[test]
    fn control_characters() {
        let ctrl = |key| Some(Keystroke::new(key, Modifiers::CTRL));
        let plain = |key| Some(Keystroke::plain(key));
        assert_eq!(keystroke_for_char('\n'), plain(Key::Enter));
        assert_eq!(keystroke_for_char('\r'), plain(Key::Enter));
        assert_eq!(keystroke_for_char('\t'), plain(Key::Tab));
        assert_eq!(keystroke_for_char('\u{8}'), plain(Key::Backspace));
        assert_eq!(keystroke_for_char('\u{7f}'), plain(Key::Backspace));
        assert_eq!(keystroke_for_char('\u{1b}'), plain(Key::Escape));
        assert_eq!(keystroke_for_char('\0'), ctrl(Key::Space));
        assert_eq!(keystroke_for_char('\u{1}'), ctrl(Key::A));
        assert_eq!(keystroke_for_char('\u{1a}'), ctrl(Key::Z));
        assert_eq!(keystroke_for_char('\u{1c}'), ctrl(Key::Backslash));
        assert_eq!(keystroke_for_char('\u{1d}'), ctrl(Key::RightBracket));
        assert_eq!(keystroke_for_char('\u{1e}'), ctrl(Key::Digit6));
        assert_eq!(keystroke_for_char('\u{1f}'), ctrl(Key::Minus));
        // Ctrl and a letter is the letter's code less 0x60, as a terminal
        // sends it, for every control character not taken above.
        for byte in 0x01..=0x1a_u8 {
            if [0x08, 0x09, 0x0a, 0x0d].contains(&byte) {
                continue;
            }
            let keystroke = keystroke_for_char(char::from(byte)).expect("types");
            assert!(keystroke.modifiers.ctrl && !keystroke.modifiers.shift);
            let letter = keystroke_for_char(char::from(byte + 0x60)).expect("a letter");
            assert_eq!(keystroke.key, letter.key, "{byte:#x}");
        }
        // All of ASCII types; nothing else does.
        assert!((0..=0x7f_u8).all(|byte| keystroke_for_char(char::from(byte)).is_some()));
        for ch in ['\u{80}', 'é', '€', '\u{10ffff}'] {
            assert_eq!(keystroke_for_char(ch), None, "{ch:?}");
        }
    }

    #[test]
    fn typed_through_the_8042_as_set_1() {
        let mut kbc = I8042::new();
        // A PC BIOS leaves translation on, and Linux keeps it.
        assert_ne!(kbc.command_byte() & CB_XLATE, 0);
        let mut typed = Vec::new();
        for event in keystroke_for_char('a').expect("a types").events() {
            kbc.push_scancodes(&event);
            typed.extend(read_all(&mut kbc));
        }
        assert_eq!(typed, [0x1e, 0x9e]);

        let mut typed = Vec::new();
        for event in Keystroke::CTRL_ALT_DELETE.events() {
            kbc.push_scancodes(&event);
            typed.extend(read_all(&mut kbc));
        }
        assert_eq!(typed, [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d]);

        // Every key: the set 1 make, then the make with bit 7 set.
        for &key in Key::ALL {
            kbc.push_scancodes(&key.make());
            let make = read_all(&mut kbc);
            kbc.push_scancodes(&key.break_code());
            let brk = read_all(&mut kbc);
            let set1 = set1_code(key);
            // Extended keys keep their E0 prefix unchanged.
            let [prefix, code] = set1.to_be_bytes();
            let prefix: &[u8] = if prefix == 0 { &[] } else { &[prefix] };
            let expected_make = [prefix, &[code]].concat();
            let expected_break = [prefix, &[code | 0x80]].concat();
            assert_eq!(make, expected_make, "{key:?} down");
            assert_eq!(brk, expected_break, "{key:?} up");
        }
    }

    #[test]
    fn a_whole_keystroke_fits_an_empty_keyboard() {
        // The host may push all of a keystroke before the guest reads.
        let mut kbc = I8042::new();
        let keystroke = keystroke_for_char('~').expect("~ types");
        for event in keystroke.events() {
            kbc.push_scancodes(&event);
        }
        assert_eq!(read_all(&mut kbc), [0x2a, 0x29, 0xa9, 0xaa]);
    }

    proptest! {
        #[test]
        fn any_char_is_handled(ch in any::<char>()) {
            match keystroke_for_char(ch) {
                Some(keystroke) => {
                    prop_assert!(ch.is_ascii());
                    let events = keystroke.events();
                    prop_assert!(events.len() >= 2 && events.len() <= 6);
                    prop_assert!(events.iter().map(Vec::len).sum::<usize>() <= 16);
                }
                None => prop_assert!(!ch.is_ascii()),
            }
        }
    }
}
