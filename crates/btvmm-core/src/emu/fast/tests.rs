use iced_x86::code_asm::{
    AsmRegister32, CodeAssembler, ah, byte_ptr, cl, dword_ptr, dx, eax, ebp, ebx, ecx, edi, edx,
    esi, word_ptr,
};

use super::*;
use crate::emu::testing::{CODE, STACK, TestMachine, cpu};

/// Runs everything up to `end` (EIP), at most `budget` instructions.
struct UpTo {
    end: u32,
}

impl<M: ?Sized> Driver<M, u32> for UpTo {
    fn before(&mut self, cpu: &Cpu, _: &mut M, _: &Instruction, note: &mut Option<u32>) -> bool {
        *note = Some(note.unwrap_or(0) + 1);
        cpu.eip != self.end
    }

    fn after(&mut self, _: &Cpu, _: &mut M, _: Outcome) -> bool {
        true
    }
}

/// The general emulator, one instruction at a time, up to `end`: the
/// instructions retired and the stop, if one came.
fn general(cpu: &mut Cpu, machine: &mut TestMachine, end: u32) -> (u32, Option<Stop>) {
    let mut retired = 0;
    while cpu.eip != end && retired < 10_000 {
        match crate::emu::step(cpu, machine) {
            Ok(Outcome::Retired) => retired += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(stop) => return (retired, Some(stop)),
        }
    }
    (retired, None)
}

fn fast(
    cpu: &mut Cpu,
    machine: &mut TestMachine,
    cache: &mut BlockCache<u32>,
    end: u32,
) -> (u32, Option<Stop>) {
    let ran = run(cpu, machine, cache, &mut UpTo { end }, 10_000);
    match ran.end {
        End::Driver => (ran.retired, None),
        End::Stopped(stop) => (ran.retired, Some(stop)),
        other => panic!("unexpected end {other:?} after {}", ran.retired),
    }
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        // The middle bits, truncated on purpose.
        #[allow(clippy::cast_possible_truncation)]
        let bits = (self.0 >> 16) as u32;
        bits
    }

    fn below(&mut self, n: u32) -> u32 {
        self.next() % n
    }
}

/// Data the sequences address through EBX.
const DATA: u32 = 0x9000;
/// ESI points here, just below a page that is not mapped.
const EDGE: u32 = 0xaff0;

const FREE: [AsmRegister32; 5] = [eax, ecx, edx, edi, ebp];

/// A random sequence of the instructions the fast forms cover, with some
/// that go through the general emulator, memory operands that fault, and
/// forward branches; ends at the returned address.
fn random_sequence(rng: &mut Rng) -> (Vec<u8>, u32) {
    let mut a = CodeAssembler::new(32).expect("32-bit assembler");
    for _ in 0..40 {
        let r = FREE[rng.below(5) as usize];
        let s = FREE[rng.below(5) as usize];
        let d = rng.below(0x40) * 4 + rng.below(2) * rng.below(4);
        let imm = rng.next();
        let small = rng.below(256) as i32 - 128;
        let step: Result<(), iced_x86::IcedError> = match rng.below(20) {
            0 => a.mov(r, s),
            1 => a.mov(r, imm),
            2 => a.mov(r, dword_ptr(ebx + d)),
            3 => a.mov(dword_ptr(ebx + d), r),
            4 => a.mov(dword_ptr(ebx + d), imm),
            5 => match rng.below(7) {
                0 => a.add(r, s),
                1 => a.sub(r, s),
                2 => a.and(r, s),
                3 => a.or(r, s),
                4 => a.xor(r, s),
                5 => a.cmp(r, s),
                _ => a.test(r, s),
            },
            6 => match rng.below(5) {
                0 => a.add(r, small),
                1 => a.sub(r, imm),
                2 => a.and(r, imm),
                3 => a.cmp(r, small),
                _ => a.test(r, imm),
            },
            7 => match rng.below(4) {
                0 => a.add(dword_ptr(ebx + d), r),
                1 => a.sub(dword_ptr(ebx + d), small),
                2 => a.xor(dword_ptr(ebx + d), imm),
                _ => a.cmp(dword_ptr(ebx + d), r),
            },
            8 => match rng.below(3) {
                0 => a.add(r, dword_ptr(ebx + d)),
                1 => a.or(r, dword_ptr(ebx + d)),
                _ => a.test(dword_ptr(ebx + d), r),
            },
            9 => match rng.below(3) {
                0 => a.inc(r),
                1 => a.dec(r),
                _ => a.dec(dword_ptr(ebx + d)),
            },
            10 => a.lea(r, dword_ptr(ebx + s * 4 + d)),
            11 => match rng.below(3) {
                0 => a.push(r),
                1 => a.push(small),
                _ => a.push(imm),
            },
            12 => a.pop(r),
            // Straight to the families' handlers, and (RDTSC) the general
            // emulator.
            13 => match rng.below(20) {
                0 => a.movzx(r, byte_ptr(ebx + d)),
                1 => a.shl(r, 3),
                2 => a.imul_2(r, s),
                3 => a.adc(r, s),
                4 => a.xchg(r, s),
                5 => a.sete(byte_ptr(ebx + d)),
                6 => a.movzx(r, word_ptr(ebx + d)),
                7 => a.mov(word_ptr(ebx + d), dx),
                8 => a.mov(byte_ptr(ebx + d), cl),
                9 => a.mov(ah, byte_ptr(ebx + d)),
                10 => a.sar(r, cl),
                11 => a.shr(word_ptr(ebx + d), 1),
                12 => a.not(r),
                13 => a.sbb(dword_ptr(ebx + d), r),
                14 => a.movsx(r, byte_ptr(esi + rng.below(0x14))),
                15 => a.pushfd(),
                16 => a.popfd(),
                17 => a.cli(),
                18 => a.sti(),
                _ => a.rdtsc(),
            },
            14 => {
                // A forward branch over the next instruction.
                let mut over = a.create_label();
                let branch = match rng.below(4) {
                    0 => a.je(over),
                    1 => a.jb(over),
                    2 => a.jg(over),
                    _ => a.jmp(over),
                };
                branch
                    .and_then(|()| a.inc(r))
                    .and_then(|()| a.set_label(&mut over))
                    .and_then(|()| a.nop())
            }
            15 => match rng.below(2) {
                // Near the unmapped page: some of these fault.
                0 => a.mov(r, dword_ptr(esi + rng.below(0x14))),
                _ => a.add(dword_ptr(esi + rng.below(0x14)), r),
            },
            16 => {
                // CALL to the next instruction, which pops its return
                // address; a RET back to a label.
                let mut next = a.create_label();
                a.call(next)
                    .and_then(|()| a.set_label(&mut next))
                    .and_then(|()| a.pop(r))
            }
            17 => {
                let mut back = a.create_label();
                let mut past = a.create_label();
                a.call(back)
                    .and_then(|()| a.jmp(past))
                    .and_then(|()| a.set_label(&mut back))
                    .and_then(|()| a.ret())
                    .and_then(|()| a.set_label(&mut past))
                    .and_then(|()| a.nop())
            }
            18 => a.mov(r, dword_ptr(d + DATA)),
            _ => a.lea(r, dword_ptr(s + small)),
        };
        step.expect("assembles");
    }
    a.int3().expect("assembles");
    let code = a.assemble(u64::from(CODE)).expect("assembles");
    #[allow(clippy::cast_possible_truncation)] // small
    let end = CODE + code.len() as u32 - 1;
    (code, end)
}

fn machine_with(code: &[u8], rng: &mut Rng) -> TestMachine {
    let mut m = TestMachine::default();
    m.poke(CODE, code);
    for i in 0..0x200 {
        m.poke_u32(DATA + 4 * i, rng.next());
    }
    m.unmapped_pages.push(0xb);
    m
}

fn random_cpu(rng: &mut Rng) -> Cpu {
    let mut c = cpu();
    for register in [Gpr::Eax, Gpr::Ecx, Gpr::Edx, Gpr::Edi, Gpr::Ebp] {
        c.gpr[register as usize] = rng.next();
    }
    c.gpr[Gpr::Ebx as usize] = DATA;
    c.gpr[Gpr::Esi as usize] = EDGE;
    c.eflags = 0x2 | (rng.next() & STATUS);
    c
}

#[test]
fn random_sequences_end_exactly_as_under_the_general_emulator() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut cache = BlockCache::default();
    let mut faults = 0;
    for round in 0..400 {
        let (code, end) = random_sequence(&mut rng);
        let mut seed = Rng(rng.next().into());
        let mut reference_machine = machine_with(&code, &mut seed);
        let mut seed = Rng(rng.next().into());
        let mut reference = random_cpu(&mut seed);
        let machine = TestMachine {
            memory: reference_machine.memory.clone(),
            unmapped_pages: vec![0xb],
            ..TestMachine::default()
        };
        let c = reference.clone();
        let expected = general(&mut reference, &mut reference_machine, end);
        // Twice: decoded, then from the kept blocks.
        for pass in 0..2 {
            let mut pass_cpu = c.clone();
            let mut pass_machine = TestMachine {
                memory: machine.memory.clone(),
                unmapped_pages: vec![0xb],
                ..TestMachine::default()
            };
            let got = fast(&mut pass_cpu, &mut pass_machine, &mut cache, end);
            assert_eq!(got, expected, "round {round} pass {pass}: retired, stop");
            assert_eq!(pass_cpu, reference, "round {round} pass {pass}: vCPU");
            assert!(
                pass_machine.memory == reference_machine.memory,
                "round {round} pass {pass}: memory"
            );
        }
        faults += u32::from(expected.1.is_some());
    }
    let stats = cache.stats();
    assert!(faults > 20, "the sequences fault sometimes ({faults})");
    assert!(
        stats.hits > stats.decoded,
        "kept blocks are used: {stats:?}"
    );
    assert!(
        stats.fast > 4 * stats.general,
        "mostly fast forms: {stats:?}"
    );
}

#[test]
fn rewritten_code_is_decoded_again_and_notes_go_with_the_old_decoding() {
    let mut m = TestMachine::default();
    let mut cache = BlockCache::default();
    let one = [0xb8, 1, 0, 0, 0, 0xcc]; // mov eax, 1; int3
    let two = [0xb8, 2, 0, 0, 0, 0xcc]; // mov eax, 2; int3
    let end = CODE + 5;
    m.poke(CODE, &one);
    let mut c = cpu();
    fast(&mut c, &mut m, &mut cache, end);
    assert_eq!(c.gpr[0], 1);
    let mut c = cpu();
    fast(&mut c, &mut m, &mut cache, end);
    let noted = cache.slots[slot_of(CODE)].as_ref().expect("kept").ops[0].note;
    assert_eq!(noted, Some(2), "the note made at the first run is kept");
    m.poke(CODE, &two);
    let mut c = cpu();
    fast(&mut c, &mut m, &mut cache, end);
    assert_eq!(c.gpr[0], 2, "the new bytes ran");
    let noted = cache.slots[slot_of(CODE)].as_ref().expect("kept").ops[0].note;
    assert_eq!(noted, Some(1), "a fresh note for the new decoding");
    assert_eq!(cache.stats().decoded, 2);
}

#[test]
fn a_store_into_the_next_instruction_runs_the_new_instruction() {
    // mov dword [CODE+10], 0x40404040 (10 bytes); nop x4; int3: the
    // stored bytes are four INC EAX.
    let mut code = vec![0xc7, 0x05];
    code.extend_from_slice(&(CODE + 10).to_le_bytes());
    code.extend_from_slice(&0x4040_4040u32.to_le_bytes());
    code.extend_from_slice(&[0x90, 0x90, 0x90, 0x90, 0xcc]);
    let end = CODE + 14;
    for _ in 0..2 {
        let mut m = TestMachine::default();
        m.poke(CODE, &code);
        let mut reference_machine = TestMachine::default();
        reference_machine.poke(CODE, &code);
        let mut reference = cpu();
        let expected = general(&mut reference, &mut reference_machine, end);
        assert_eq!(reference.gpr[0], 4, "the general path runs the new bytes");
        let mut cache = BlockCache::default();
        let mut c = cpu();
        assert_eq!(fast(&mut c, &mut m, &mut cache, end), expected);
        assert_eq!(c, reference);
    }
}

#[test]
fn code_that_cannot_be_a_block_goes_to_the_general_path() {
    let mut m = TestMachine::default();
    let mut cache = BlockCache::<u32>::default();
    // 16-bit code.
    let mut c = cpu();
    c.segment_mut(SegReg::Cs).cache.big = false;
    m.poke(CODE, &[0x90]);
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: 0 }, 10);
    assert!(matches!(ran.end, End::NoBlock) && ran.retired == 0);
    // Beyond the CS limit.
    let mut c = cpu();
    c.segment_mut(SegReg::Cs).cache.limit = CODE - 1;
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: 0 }, 10);
    assert!(matches!(ran.end, End::NoBlock));
    // An instruction crossing into a page that is not mapped.
    let mut c = cpu();
    c.eip = 0xaffe;
    m.poke(0xaffe, &[0x90, 0xb8]); // nop; mov eax, imm32 (crosses)
    m.unmapped_pages.push(0xb);
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: 0 }, 10);
    assert!(matches!(ran.end, End::NoBlock), "{ran:?}");
    assert_eq!((ran.retired, c.eip), (1, 0xafff), "the NOP ran first");
}

#[test]
fn the_budget_and_the_driver_end_a_run_between_instructions() {
    let mut m = TestMachine::default();
    let mut cache = BlockCache::<u32>::default();
    // inc eax; jmp back to it: a loop.
    m.poke(CODE, &[0x40, 0xeb, 0xfd]);
    let mut c = cpu();
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: u32::MAX }, 101);
    assert!(matches!(ran.end, End::Driver));
    assert_eq!((ran.retired, c.gpr[0], c.eip), (101, 51, CODE + 1));
    assert_eq!(c.gpr[Gpr::Esp as usize], STACK);
}

#[test]
fn a_fault_in_a_fast_form_leaves_the_vcpu_as_before() {
    let mut m = TestMachine::default();
    m.unmapped_pages.push(0x7);
    let mut cache = BlockCache::<u32>::default();
    // ret: pops a target beyond the CS limit (#GP after the pop).
    m.poke(CODE, &[0xc3]);
    m.poke_u32(STACK, 0x5000);
    let mut c = cpu();
    c.segment_mut(SegReg::Cs).cache.limit = 0x4fff;
    let before = c.clone();
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: 0 }, 10);
    assert!(matches!(ran.end, End::Stopped(Stop::Exception(e)) if e == Exception::gp(0)));
    assert_eq!(c, before);
    // push into a stack page that is not mapped.
    m.poke(CODE, &[0x50]);
    let mut c = cpu();
    c.gpr[Gpr::Esp as usize] = 0x8000;
    let before = c.clone();
    let ran = run(&mut c, &mut m, &mut cache, &mut UpTo { end: 0 }, 10);
    assert!(matches!(ran.end, End::Stopped(Stop::Exception(_))));
    assert_eq!(c, before);
}

/// Stops after every instruction.
struct OneAtATime;

impl<M: ?Sized> Driver<M, u32> for OneAtATime {
    fn before(&mut self, _: &Cpu, _: &mut M, _: &Instruction, _: &mut Option<u32>) -> bool {
        true
    }

    fn after(&mut self, _: &Cpu, _: &mut M, _: Outcome) -> bool {
        false
    }
}

#[test]
fn a_run_ends_at_hlt_whatever_the_driver_says() {
    let mut m = TestMachine::default();
    let mut cache = BlockCache::<u32>::default();
    m.poke(CODE, &[0xf4, 0xeb, 0xfd]); // hlt; jmp back to it
    for mut driver in [
        Box::new(UpTo { end: u32::MAX }) as Box<dyn Driver<TestMachine, u32>>,
        Box::new(OneAtATime),
    ] {
        let mut c = cpu();
        let ran = run(&mut c, &mut m, &mut cache, &mut *driver, 100);
        assert!(matches!(ran.end, End::Halted), "{ran:?}");
        assert_eq!((ran.retired, c.eip), (1, CODE + 1));
    }
}

/// Declines every instruction, then runs on while an INC follows within
/// the rest of the block; records what it was shown.
#[derive(Default)]
struct RunsOnToInc {
    shown: Vec<Vec<u64>>,
}

impl<M: ?Sized> Driver<M, u32> for RunsOnToInc {
    fn before(&mut self, _: &Cpu, _: &mut M, _: &Instruction, _: &mut Option<u32>) -> bool {
        false
    }

    fn after(&mut self, _: &Cpu, _: &mut M, _: Outcome) -> bool {
        true
    }

    fn run_on(&mut self, _: &Cpu, _: &mut M, ahead: &mut [Op<u32>]) -> bool {
        self.shown
            .push(ahead.iter().map(|op| op.instr.ip()).collect());
        ahead
            .iter()
            .any(|op| op.instr.mnemonic() == iced_x86::Mnemonic::Inc)
    }
}

#[test]
fn run_on_sees_the_rest_of_the_block_from_eip_and_can_keep_a_run_going() {
    let mut m = TestMachine::default();
    let mut cache = BlockCache::<u32>::default();
    // nop; inc eax; nop; nop; jmp $: the run goes on up to and through
    // the INC, then stops before the first NOP after it.
    m.poke(CODE, &[0x90, 0x40, 0x90, 0x90, 0xeb, 0xfe]);
    let mut c = cpu();
    let mut driver = RunsOnToInc::default();
    let ran = run(&mut c, &mut m, &mut cache, &mut driver, 100);
    assert!(matches!(ran.end, End::Driver), "{ran:?}");
    assert_eq!((ran.retired, c.eip), (2, CODE + 2));
    assert_eq!(c.gpr[Gpr::Eax as usize], 1);
    let block = [CODE, CODE + 1, CODE + 2, CODE + 3, CODE + 4].map(u64::from);
    assert_eq!(
        driver.shown,
        [block.to_vec(), block[1..].to_vec(), block[2..].to_vec()]
    );
}
