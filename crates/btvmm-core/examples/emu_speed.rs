use btvmm_core::Stop;
use btvmm_core::cpu::{Cpu, Gpr};
use btvmm_core::emu::{self, decode_cache::DecodeCache};
use btvmm_core::machine::{Access, Machine};
use iced_x86::code_asm::*;

struct Flat(Vec<u8>);
impl Machine for Flat {
    fn read_linear(&mut self, linear: u32, buf: &mut [u8], _a: Access) -> Result<(), Stop> {
        let at = linear as usize;
        buf.copy_from_slice(&self.0[at..at + buf.len()]);
        Ok(())
    }
    fn write_linear(&mut self, linear: u32, data: &[u8], _a: Access) -> Result<(), Stop> {
        let at = linear as usize;
        self.0[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn port_in(&mut self, _p: u16, _s: u8) -> Result<u32, Stop> {
        Ok(0)
    }
    fn port_out(&mut self, _p: u16, _s: u8, _v: u32) -> Result<(), Stop> {
        Ok(())
    }
    fn timestamp(&mut self) -> u64 {
        0
    }
}

fn main() {
    let mut a = CodeAssembler::new(32).unwrap();
    let mut top = a.create_label();
    a.set_label(&mut top).unwrap();
    a.push(eax).unwrap();
    a.push(ebp).unwrap();
    a.push(edi).unwrap();
    a.push(esi).unwrap();
    a.push(edx).unwrap();
    a.push(ecx).unwrap();
    a.push(ebx).unwrap();
    a.mov(edx, 0x7bu32).unwrap();
    a.mov(ecx, dword_ptr(0x9000)).unwrap();
    a.add(ecx, 0x3000).unwrap();
    a.sub(ecx, esp).unwrap();
    a.cmp(ecx, 0x1000).unwrap();
    a.mov(esi, esp).unwrap();
    a.and(esi, 0xffff_f000u32).unwrap();
    a.mov(edi, dword_ptr(esi + 0x200)).unwrap();
    a.test(dword_ptr(esp + 0x10), 2).unwrap();
    a.pop(ebx).unwrap();
    a.pop(ecx).unwrap();
    a.pop(edx).unwrap();
    a.pop(esi).unwrap();
    a.pop(edi).unwrap();
    a.pop(ebp).unwrap();
    a.pop(eax).unwrap();
    a.jmp(top).unwrap();
    let code = a.assemble(0x1000).unwrap();
    let mut m = Flat(vec![0; 1 << 20]);
    m.0[0x1000..0x1000 + code.len()].copy_from_slice(&code);
    let mut cpu = Cpu::default();
    cpu.eip = 0x1000;
    cpu.gpr[Gpr::Esp as usize] = 0x8000;
    let mut cache = DecodeCache::<()>::default();
    let n = 5_000_000u64;
    let t = std::time::Instant::now();
    for _ in 0..n {
        let instr = emu::fetch_with(&cpu, &mut m, &mut cache).unwrap();
        emu::execute(&mut cpu, &mut m, &instr).unwrap();
    }
    let el = t.elapsed();
    println!(
        "{:.1} ns/instr, {:.1} M instr/s",
        el.as_nanos() as f64 / n as f64,
        n as f64 / el.as_secs_f64() / 1e6
    );
}
