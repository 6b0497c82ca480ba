/* The driver-guest: picks the test named by `test=NAME` on the command line and runs it.
 * Adding a test: write `void test_foo(void)` in tests/, declare it in tests/tests.h, and add a
 * row to the table below. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "tests/tests.h"

static const struct dg_test tests[] = {
    {"hello", test_hello, "boot, print the command line, reset"},
    {"exception", test_exception, "ud2: must end in a FAIL line naming #UD (checks the IDT)"},
    {"enumerate", test_enumerate, "list PCI bus 0; a host bridge and a virtio device"},
    {"rng", test_rng, "virtio-rng with MSI-X: two 64-byte round trips"},
    {"rng-batch", test_rng_batch, "virtio-rng: 8 requests in flight, 2 of them chains"},
    {"rng-event-idx", test_rng_event_idx, "virtio-rng with VIRTIO_F_RING_EVENT_IDX (if offered)"},
    {"bus-master", test_bus_master, "virtio-rng: with Bus Master Enable clear no used entry, no MSI-X; set, it completes"},
    {"reset", test_reset, "reset virtio-rng mid-request, re-init, round trip"},
    {"garbage", test_garbage, "garbage into every virtio register and config space, then work"},
    {"snd-control", test_snd_control, "virtio-snd: every control request, legal and illegal"},
    {"snd-tx", test_snd_tx, "virtio-snd: 1 s of paced TX (40 x 25 ms), a counter pattern"},
    {"snd-tx-late-write", test_snd_tx_late_write, "virtio-snd: PCM rewritten after queueing is what plays"},
    {"snd-rx", test_snd_rx, "virtio-snd: 8 paced capture periods of silence from stream 1"},
    {"snd-bad-io", test_snd_bad_io, "virtio-snd: malformed TX/RX messages come back, then TX works"},
    {"snd-release-flush", test_snd_release_flush, "virtio-snd: RELEASE returns every message first"},
    {"snd-reset", test_snd_reset, "virtio-snd: reset with TX in flight, re-init, control + TX"},
    {"snd-flood", test_snd_flood, "virtio-snd: every queue kept full of junk for secs=N (5) s; stream 1 plays on"},
    {"snd-host-fault", test_snd_host_fault, "virtio-snd on ALSA: the Rust test kills the sound server mid-stream and restarts it"},
    {"snd-play", test_snd_play, "virtio-snd: plays stream 0 until Canto is stopped from outside (signal tests)"},
    {"virtq-attacks", test_virtq_attacks, "virtio-snd: looping/over-long/wrapping chains, avail idx jumps; then work"},
    {"internal-error", test_internal_error, "run insn=int3|xsave|fwait, which kvm_pvm cannot: Canto must report it"},
    {"serial-echo", test_serial_echo, "prints every byte COM1 receives until Canto is stopped from outside (console tests)"},
    {"soak", test_soak, "never ends: stream 1 plays while every queue of virtio-snd and virtio-rng is flooded (make soak)"},
    {"blk", test_blk, "virtio-blk: write a sector, flush, read it back; past the end IOERR, unknown UNSUPP, GET_ID"},
    {"vsock", test_vsock, "virtio-vsock: echo server on port 52 for the host's CONNECT 52 (needs --vsock)"},
    {"rtt", test_rtt, "benchmark: n= virtio-rng 8-byte round trips (TSC cycles)"},
};

/* Offsets in the Linux zero page (struct boot_params). */
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_CMD_LINE_PTR 0x228

void dg_main(const u8 *boot_params);
void dg_main(const u8 *boot_params)
{
    u64 cmdline = *(const u32 *)(boot_params + BP_CMD_LINE_PTR) |
                  (u64) * (const u32 *)(boot_params + BP_EXT_CMD_LINE_PTR) << 32;
    dg_cmdline = cmdline ? (const char *)cmdline : "";
    dg_log("hello from the driver-guest");
    dg_log("cmdline: %s", dg_cmdline);

    static char name[32];
    if (!cmdline_get(dg_cmdline, "test", name, sizeof(name)))
        name[0] = 0;
    dg_test_name = name;
    for (size_t i = 0; i < ARRAY_SIZE(tests); i++) {
        if (strcmp(name, tests[i].name) == 0) {
            irq_init();
            u64 t0 = rdtsc();
            tests[i].run();
            dg_log("test took %lu TSC cycles", rdtsc() - t0);
            kprintf("DG PASS %s\n", name);
            dg_reset();
        }
    }
    serial_puts("DG tests:");
    for (size_t i = 0; i < ARRAY_SIZE(tests); i++)
        kprintf(" %s", tests[i].name);
    serial_puts("\nDG FAIL unknown test\n");
    dg_reset();
}
