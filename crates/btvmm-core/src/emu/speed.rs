//! The emulator alone on a kernel-like mix: how fast `fetch_with` and
//! `execute` get through guest instructions over flat memory, without the
//! monitor around them (no shadow MMU, no world, no trap). The loop is a
//! system-call entry's register save and stack check and its restore
//! (pushes, pops, moves, ALU with memory operands, a test and a jump back),
//! the code the split view interprets most. `btvmm calibrate` reports it
//! beside the monitor's "instruction interpreted" path.

use iced_x86::IcedError;
use iced_x86::code_asm::{CodeAssembler, dword_ptr, eax, ebp, ebx, ecx, edi, edx, esi, esp};

use crate::cpu::{Cpu, Gpr};
use crate::emu::{self, decode_cache::DecodeCache};
use crate::exception::Stop;
use crate::machine::{Access, Machine};

/// Where the loop is placed.
const CODE: u32 = 0x1000;
/// Its stack.
const STACK: u32 = 0x8000;
/// The flat memory's size.
const MEMORY: usize = 1 << 20;

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

/// Flat memory with the loop at [`CODE`], and a vCPU about to run it.
fn loaded() -> Result<(Flat, Cpu), Stop> {
    let code = kernel_like_loop().map_err(|error| Stop::Machine(error.to_string()))?;
    let mut memory = Flat(vec![0; MEMORY]);
    memory.0[CODE as usize..CODE as usize + code.len()].copy_from_slice(&code);
    let mut cpu = Cpu {
        eip: CODE,
        ..Cpu::default()
    };
    cpu.gpr[Gpr::Esp as usize] = STACK;
    Ok((memory, cpu))
}

/// Runs `instructions` instructions of the kernel-like loop through the
/// emulator; returns the nanoseconds they took and the vCPU after them.
///
/// # Errors
///
/// A stop of the emulator (none is expected: the loop stays in its
/// memory), or the loop failing to assemble.
pub fn kernel_like_mix(instructions: u64) -> Result<(f64, Cpu), Stop> {
    let (mut memory, mut cpu) = loaded()?;
    let mut cache = DecodeCache::<()>::default();
    let started = std::time::Instant::now();
    for _ in 0..instructions {
        let instr = emu::fetch_with(&cpu, &mut memory, &mut cache)?;
        emu::execute(&mut cpu, &mut memory, &instr)?;
    }
    #[allow(clippy::cast_precision_loss)] // nanoseconds of a short run
    let elapsed = started.elapsed().as_nanos() as f64;
    Ok((elapsed, cpu))
}

/// A driver that lets everything run.
struct Everything;

impl<N> emu::fast::Driver<Flat, N> for Everything {
    fn before(
        &mut self,
        _: &Cpu,
        _: &mut Flat,
        _: &iced_x86::Instruction,
        _: &mut Option<N>,
    ) -> bool {
        true
    }

    fn after(&mut self, _: &Cpu, _: &mut Flat, _: emu::Outcome) -> bool {
        true
    }
}

/// [`kernel_like_mix`] through the fast interpreter ([`emu::fast`]):
/// blocks decoded once, runs of instructions without a fetch each.
///
/// # Errors
///
/// As [`kernel_like_mix`]; also a run that ends before `instructions`.
pub fn kernel_like_mix_fast(instructions: u64) -> Result<(f64, Cpu), Stop> {
    let (mut memory, mut cpu) = loaded()?;
    let mut cache = emu::fast::BlockCache::<()>::default();
    let started = std::time::Instant::now();
    let mut left = instructions;
    while left > 0 {
        let budget = u32::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        let ran = emu::fast::run(&mut cpu, &mut memory, &mut cache, &mut Everything, budget);
        match ran.end {
            emu::fast::End::Driver => {}
            emu::fast::End::Stopped(stop) => return Err(stop),
            other => return Err(Stop::Machine(format!("the fast run ended: {other:?}"))),
        }
        left -= u64::from(ran.retired);
    }
    #[allow(clippy::cast_precision_loss)] // nanoseconds of a short run
    let elapsed = started.elapsed().as_nanos() as f64;
    Ok((elapsed, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loop_runs_round_and_keeps_its_stack_balanced() {
        // 24 instructions a round: after whole rounds EIP and ESP are back.
        let (ns, cpu) = kernel_like_mix(24 * 100).expect("the loop runs");
        assert!(ns > 0.0);
        assert_eq!(cpu.eip, CODE);
        assert_eq!(cpu.gpr[Gpr::Esp as usize], STACK);
        assert_eq!(cpu.gpr[Gpr::Edx as usize], 0, "EDX popped back");
    }

    #[test]
    fn the_fast_interpreter_ends_the_loop_where_the_general_emulator_does() {
        let (_, general) = kernel_like_mix(24 * 100 + 7).expect("the loop runs");
        let (_, fast) = kernel_like_mix_fast(24 * 100 + 7).expect("the loop runs");
        assert_eq!(fast, general);
    }
}
