//! The emulator alone on a kernel-like mix: how many guest instructions a
//! second `emu::fetch_with` and `emu::execute` get through over flat
//! memory, without the monitor around them (no shadow MMU walk, no world,
//! no trap). The loop is a system-call entry's register save and stack
//! check and its restore (pushes, pops, moves, ALU with memory operands,
//! a test and a jump back), the code the split view interprets most.
//!
//! `cargo run --release -p btvmm-core --example emu_speed [INSTRUCTIONS]`
//!
//! What the monitor adds per interpreted instruction shows beside
//! `btvmm calibrate`'s "instruction interpreted" row.

use btvmm_core::Stop;
use btvmm_core::cpu::{Cpu, Gpr};
use btvmm_core::emu::{self, decode_cache::DecodeCache};
use btvmm_core::machine::{Access, Machine};
use iced_x86::IcedError;
use iced_x86::code_asm::{CodeAssembler, dword_ptr, eax, ebp, ebx, ecx, edi, edx, esi, esp};

/// Where the loop is placed.
const CODE: u32 = 0x1000;
/// Its stack.
const STACK: u32 = 0x8000;

/// Flat guest memory, nothing else.
struct Flat(Vec<u8>);

impl Flat {
    fn range(&self, linear: u32, len: usize) -> Result<std::ops::Range<usize>, Stop> {
        let start = linear as usize;
        let end = start + len;
        if end > self.0.len() {
            return Err(Stop::Machine(format!(
                "access at {linear:#x} outside memory"
            )));
        }
        Ok(start..end)
    }
}

impl Machine for Flat {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], _access: Access) -> Result<(), Stop> {
        let range = self.range(linear, buf.len())?;
        buf.copy_from_slice(&self.0[range]);
        Ok(())
    }

    fn write_linear(&mut self, linear: u32, data: &[u8], _access: Access) -> Result<(), Stop> {
        let range = self.range(linear, data.len())?;
        self.0[range].copy_from_slice(data);
        Ok(())
    }

    fn port_in(&mut self, _port: u16, _size: u8) -> Result<u32, Stop> {
        Ok(u32::MAX)
    }

    fn port_out(&mut self, _port: u16, _size: u8, _value: u32) -> Result<(), Stop> {
        Ok(())
    }

    fn timestamp(&mut self) -> u64 {
        0
    }
}

/// The loop's bytes at [`CODE`].
fn kernel_like_loop() -> Result<Vec<u8>, IcedError> {
    let mut a = CodeAssembler::new(32)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    for register in [eax, ebp, edi, esi, edx, ecx, ebx] {
        a.push(register)?;
    }
    a.mov(edx, 0x7bu32)?;
    a.mov(ecx, dword_ptr(0x9000))?;
    a.add(ecx, 0x3000)?;
    a.sub(ecx, esp)?;
    a.cmp(ecx, 0x1000)?;
    a.mov(esi, esp)?;
    a.and(esi, 0xffff_f000_u32)?;
    a.mov(edi, dword_ptr(esi + 0x200))?;
    a.test(dword_ptr(esp + 0x10), 2)?;
    for register in [ebx, ecx, edx, esi, edi, ebp, eax] {
        a.pop(register)?;
    }
    a.jmp(top)?;
    a.assemble(u64::from(CODE))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let instructions: u64 = match std::env::args().nth(1) {
        Some(count) => count.parse()?,
        None => 5_000_000,
    };
    let code = kernel_like_loop()?;
    let mut memory = Flat(vec![0; 1 << 20]);
    memory.0[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
    let mut cpu = Cpu {
        eip: CODE,
        ..Cpu::default()
    };
    cpu.gpr[Gpr::Esp as usize] = STACK;
    let mut cache = DecodeCache::<()>::default();
    let started = std::time::Instant::now();
    for _ in 0..instructions {
        let instr = emu::fetch_with(&cpu, &mut memory, &mut cache)?;
        emu::execute(&mut cpu, &mut memory, &instr)?;
    }
    let elapsed = started.elapsed();
    #[allow(clippy::cast_precision_loss)] // a rate
    let per_instruction = elapsed.as_secs_f64() * 1e9 / instructions as f64;
    println!(
        "{instructions} instructions in {:.3} s: {per_instruction:.1} ns an instruction, {:.1} M a second",
        elapsed.as_secs_f64(),
        1e3 / per_instruction
    );
    Ok(())
}
