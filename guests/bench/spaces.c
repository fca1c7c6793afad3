/*
 * Address-space benchmark: SPACES page directories (3 unless "spaces=N",
 * at most 4), each mapping the first 16 MiB with 4 MiB kernel pages and
 * MIB MiB (16 unless "mib=N", at most 64) of 4 KiB pages at 0x40000000,
 * every entry with A and D set already. ROUNDS times (3 unless
 * "rounds=N") the kernel loads each CR3 in turn and reads every page of
 * the region. Under btvmm, `--stats` then shows what the shadows of these
 * address spaces cost the world processes that hold them (host page
 * tables, anonymous memory, mappings), and the first round against the
 * others what switching back to a kept shadow saves. With "churn=N", after
 * the first round the kernel rewrites one entry of the current address
 * space's page table N times (same value, INVLPG each time): under btvmm
 * each is an emulated write the other address spaces must hear of, and
 * more than the pool's log holds make them start their shadows afresh.
 */
#include "lib.h"

#define MAX_SPACES 4
#define MAX_TABLES 16
#define REGION 0x40000000u
#define REGION_PHYS 0x02000000u
#define P_W_A_D 0x63
#define P_W_U_A 0x27
#define PS 0x80
#define CR4_PSE 0x10

static u32 directories[MAX_SPACES][1024] ALIGNED(4096);
static u32 tables[MAX_SPACES][MAX_TABLES][1024] ALIGNED(4096);

void kmain(void)
{
	u32 spaces = cmdline_option("spaces", 3);
	u32 mib = cmdline_option("mib", 16);
	u32 rounds = cmdline_option("rounds", 3);
	u32 churn = cmdline_option("churn", 0);
	u32 sum = 0;

	if (spaces > MAX_SPACES)
		spaces = MAX_SPACES;
	if (mib > MAX_TABLES * 4)
		mib = MAX_TABLES * 4;
	mib &= ~3u;
	for (u32 space = 0; space < spaces; space++) {
		for (u32 index = 0; index < 4; index++)
			directories[space][index] = (index << 22) | PS | P_W_A_D;
		for (u32 table = 0; table < mib / 4; table++) {
			directories[space][(REGION >> 22) + table] = (u32)tables[space][table] | P_W_U_A;
			for (u32 page = 0; page < 1024; page++)
				tables[space][table][page] =
					(REGION_PHYS + (table * 1024 + page) * 4096) | P_W_A_D;
		}
	}
	write_cr4(read_cr4() | CR4_PSE);
	write_cr3((u32)directories[0]);
	write_cr0(read_cr0() | CR0_PG | CR0_WP);
	for (u32 round = 0; round < rounds; round++) {
		for (u32 space = 0; space < spaces; space++) {
			write_cr3((u32)directories[space]);
			for (u32 page = 0; page < mib * 256; page++)
				sum += *(volatile u32 *)(REGION + page * 4096);
		}
		for (u32 i = 0; round == 0 && i < churn; i++) {
			volatile u32 *entry = &tables[spaces - 1][0][0];
			*entry = *entry;
			asm volatile("invlpg (%0)" : : "r"(REGION) : "memory");
		}
	}
	printf("# spaces: %u address spaces of %u MiB, %u rounds\n", spaces, mib, rounds);
	check_eq("the region reads as zeros", sum, 0);
	finish();
}
