//! A machine for emulator unit tests: 1 MiB of flat memory, scripted port
//! input, and a log of what the instruction did to the outside.

use std::collections::VecDeque;

use iced_x86::{Decoder, DecoderOptions, Formatter, GasFormatter};

use crate::cpu::{Cpu, Gpr};
use crate::exception::{Exception, Stop};
use crate::machine::{Access, AccessKind, Event, Machine};

use super::{Outcome, step};

/// Memory size of the test machine.
pub const MEMORY: usize = 1 << 20;
/// Where test code is placed.
pub const CODE: u32 = 0x1000;
/// Initial stack pointer.
pub const STACK: u32 = 0x8000;

/// The test machine.
pub struct TestMachine {
    pub memory: Vec<u8>,
    /// Values IN instructions read, in order.
    pub port_input: VecDeque<u32>,
    /// (port, size, value) of every OUT.
    pub port_output: Vec<(u16, u8, u32)>,
    /// (port, size) of every IN.
    pub port_reads: Vec<(u16, u8)>,
    pub events: Vec<Event>,
    pub tsc: u64,
    /// Linear pages (address >> 12) whose accesses raise #PF.
    pub unmapped_pages: Vec<u32>,
    /// Bytes of each string port transfer (INS positive, OUTS negative).
    pub string_transfers: Vec<i64>,
}

impl Default for TestMachine {
    fn default() -> Self {
        Self {
            memory: vec![0; MEMORY],
            port_input: VecDeque::new(),
            port_output: Vec::new(),
            port_reads: Vec::new(),
            events: Vec::new(),
            tsc: 0x1234_5678_9abc,
            unmapped_pages: Vec::new(),
            string_transfers: Vec::new(),
        }
    }
}

impl TestMachine {
    fn check(&self, linear: u32, len: usize, access: Access) -> Result<(), Stop> {
        for offset in 0..len {
            #[allow(clippy::cast_possible_truncation)]
            let at = linear.wrapping_add(offset as u32);
            if at as usize >= MEMORY || self.unmapped_pages.contains(&(at >> 12)) {
                let code = u32::from(access.kind == AccessKind::Write) << 1
                    | u32::from(access.user) << 2
                    | u32::from(access.kind == AccessKind::Execute) << 4;
                return Err(Exception::page_fault(at, code).into());
            }
        }
        Ok(())
    }

    /// Little-endian u32 at a linear address.
    pub fn u32_at(&self, linear: u32) -> u32 {
        let at = linear as usize;
        u32::from_le_bytes(self.memory[at..at + 4].try_into().expect("4 bytes"))
    }

    /// Little-endian u16 at a linear address.
    pub fn u16_at(&self, linear: u32) -> u16 {
        let at = linear as usize;
        u16::from_le_bytes(self.memory[at..at + 2].try_into().expect("2 bytes"))
    }

    /// Stores bytes at a linear address.
    pub fn poke(&mut self, linear: u32, bytes: &[u8]) {
        let at = linear as usize;
        self.memory[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// Stores a u32.
    pub fn poke_u32(&mut self, linear: u32, value: u32) {
        self.poke(linear, &value.to_le_bytes());
    }
}

impl Machine for TestMachine {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], access: Access) -> Result<(), Stop> {
        self.check(linear, buf.len(), access)?;
        let at = linear as usize;
        buf.copy_from_slice(&self.memory[at..at + buf.len()]);
        Ok(())
    }

    fn write_linear(&mut self, linear: u32, data: &[u8], access: Access) -> Result<(), Stop> {
        self.check(linear, data.len(), access)?;
        let at = linear as usize;
        self.memory[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    fn port_in(&mut self, port: u16, size: u8) -> Result<u32, Stop> {
        self.port_reads.push((port, size));
        Ok(self.port_input.pop_front().unwrap_or(0xffff_ffff) & super::mask(u32::from(size)))
    }

    fn port_out(&mut self, port: u16, size: u8, value: u32) -> Result<(), Stop> {
        self.port_output.push((port, size, value));
        Ok(())
    }

    fn port_in_string(&mut self, port: u16, size: u8, buf: &mut [u8]) -> Result<(), Stop> {
        self.string_transfers.push(buf.len() as i64);
        crate::machine::read_items(size, buf, || self.port_in(port, size))
    }

    fn port_out_string(&mut self, port: u16, size: u8, data: &[u8]) -> Result<(), Stop> {
        self.string_transfers.push(-(data.len() as i64));
        crate::machine::write_items(size, data, |value| self.port_out(port, size, value))
    }

    fn timestamp(&mut self) -> u64 {
        self.tsc
    }

    fn notify(&mut self, event: Event) {
        self.events.push(event);
    }
}

/// A flat 32-bit CPU at CPL 0 with EIP at [`CODE`] and ESP at [`STACK`].
pub fn cpu() -> Cpu {
    let mut cpu = Cpu {
        eip: CODE,
        ..Cpu::default()
    };
    cpu.gpr[Gpr::Esp as usize] = STACK;
    cpu
}

/// Places `code` at EIP and executes one instruction.
pub fn run(cpu: &mut Cpu, machine: &mut TestMachine, code: &[u8]) -> Result<Outcome, Stop> {
    let at = cpu.linear_eip();
    machine.poke(at, code);
    step(cpu, machine)
}

/// GNU-syntax text of the first instruction in `code`, for messages.
#[allow(dead_code)] // for the families' test messages
pub fn disassemble(code: &[u8]) -> String {
    let instr = Decoder::with_ip(32, code, u64::from(CODE), DecoderOptions::NONE).decode();
    let mut text = String::new();
    GasFormatter::new().format(&instr, &mut text);
    text
}
