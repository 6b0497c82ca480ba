/* snd-host-fault: the host's sound device goes away while the guest plays, and comes back.
 *
 * Run by tests/tests/driver_guest.rs with `--sound backend=alsa,device=pulse` on a private
 * PulseAudio server that the Rust test kills (SIGKILL) when this guest prints "playing", and
 * starts again when it prints "waiting for the device". The guest checks what a driver sees:
 *   1. periods complete OK until the server dies, then IO_ERR; every message in flight comes back
 *      (OK or IO_ERR, nothing else, none lost) and STOP/RELEASE answer OK;
 *   2. PREPARE without the device fails with IO_ERR, and keeps failing until the device is back;
 *   3. then SET_PARAMS, PREPARE and START work again and RESUME_PERIODS periods play OK, paced by
 *      the host device (the Rust test also finds the PCM in what the new server played).
 * Every wait is bounded. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

#define FAULT_PERIOD 4800 /* 25 ms of S16/48k/stereo */
#define FAULT_DEPTH 4
#define PLAYING_AFTER 8      /* OK periods before the guest says it is playing */
#define RESUME_PERIODS 20    /* 500 ms of audio after the device is back */
#define PHASE_LIMIT_MS 30000 /* the longest any phase may take */
#define COMPLETION_MS 2000   /* the longest one period may take to come back */
/* What plays after the recovery: the Rust test looks for this sample in the server's output. */
#define RESUME_SAMPLE 0x2345

static u8 fault_pcm[FAULT_DEPTH][FAULT_PERIOD] ALIGNED(64);
static struct snd_io fault_msgs[FAULT_DEPTH];

static void queue_all(struct virtq *tx, u16 sample)
{
    for (int i = 0; i < FAULT_DEPTH; i++) {
        fault_msgs[i] = (struct snd_io){.stream_id = 0, .data = fault_pcm[i], .len = FAULT_PERIOD};
        snd_fill_const(fault_pcm[i], FAULT_PERIOD, sample);
        snd_io_add(tx, &fault_msgs[i]);
    }
    virtq_kick(tx);
}

static u32 in_flight(void)
{
    u32 n = 0;
    for (int i = 0; i < FAULT_DEPTH; i++)
        n += fault_msgs[i].head >= 0;
    return n;
}

/* The next completion; its status must be OK or IO_ERR (§5.14.6.8 names no other). */
static struct snd_io *next_done(struct virtq *tx, const char *what)
{
    u32 len;
    struct snd_io *m = snd_io_wait(tx, fault_msgs, FAULT_DEPTH, &len, COMPLETION_MS, what);
    if (m->st.status != SND_S_OK && m->st.status != SND_S_IO_ERR)
        dg_fail("%s: status 0x%x (%s)", what, m->st.status, snd_status_name(m->st.status));
    if (len != 8)
        dg_fail("%s: used len %u, expected 8 (the status alone)", what, len);
    return m;
}

void test_snd_host_fault(void)
{
    snd_up();
    struct virtq *tx = &snd.vq[SND_TXQ];
    snd_tsc_per_ms();

    /* 1. Play until the device goes away. */
    snd_set_params_ok(0, FAULT_DEPTH * FAULT_PERIOD, FAULT_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    queue_all(tx, 0x1111);
    snd_cmd_ok(SND_R_PCM_START, 0);
    u64 t0 = rdtsc();
    u32 ok = 0;
    for (;;) {
        if (snd_ms_since(t0) > PHASE_LIMIT_MS)
            dg_fail("no IO_ERR within %u ms of playing (%u periods OK): was the server killed?",
                    PHASE_LIMIT_MS, ok);
        struct snd_io *m = next_done(tx, "playing");
        if (m->st.status == SND_S_IO_ERR)
            break;
        if (++ok == PLAYING_AFTER)
            dg_log("snd-host-fault: playing (%u periods OK)", ok);
        snd_io_add(tx, m);
        virtq_kick(tx);
    }
    if (ok < PLAYING_AFTER)
        dg_fail("IO_ERR after only %u OK periods, before the server was killed", ok);
    u32 pending = in_flight(), pending_err = 0;
    while (in_flight()) {
        if (next_done(tx, "pending after the fault")->st.status == SND_S_IO_ERR)
            pending_err++;
    }
    dg_log("snd-host-fault: IO_ERR after %u OK periods; the %u messages still in flight came back "
           "(%u IO_ERR)", ok, pending, pending_err);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);

    /* 2. Prepare again until the device is back. */
    u32 failed = 0;
    t0 = rdtsc();
    for (;;) {
        if (snd_ms_since(t0) > PHASE_LIMIT_MS)
            dg_fail("PREPARE still failing after %u ms (%u attempts): was the server restarted?",
                    PHASE_LIMIT_MS, failed);
        snd_set_params_ok(0, FAULT_DEPTH * FAULT_PERIOD, FAULT_PERIOD);
        u32 st = snd_pcm_cmd(SND_R_PCM_PREPARE, 0);
        if (st == SND_S_OK)
            break;
        if (st != SND_S_IO_ERR)
            dg_fail("PREPARE without the device: 0x%x (%s), expected IO_ERR", st, snd_status_name(st));
        if (failed++ == 0)
            dg_log("snd-host-fault: PREPARE without the device: IO_ERR; waiting for the device");
        sleep_ms(200);
    }
    if (!failed)
        dg_fail("the first PREPARE after the fault succeeded: the device was never missing");
    dg_log("snd-host-fault: PREPARE OK after %u failed attempts", failed);

    /* 3. Play again. */
    queue_all(tx, RESUME_SAMPLE);
    u64 t_start = rdtsc();
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (u32 done = 0; done < RESUME_PERIODS; done++) {
        struct snd_io *m = next_done(tx, "resumed");
        if (m->st.status != SND_S_OK)
            dg_fail("resumed period %u: %s", done, snd_status_name(m->st.status));
        if (done + FAULT_DEPTH < RESUME_PERIODS) {
            snd_io_add(tx, m);
            virtq_kick(tx);
        }
    }
    u64 ms = snd_ms_since(t_start);
    snd_cmd_ok(SND_R_PCM_STOP, 0);
    snd_cmd_ok(SND_R_PCM_RELEASE, 0);
    dg_log("snd-host-fault: resumed: %u periods of 25 ms OK in %lu ms", RESUME_PERIODS, ms);
    /* The host device paces the stream: 500 ms of audio cannot all complete at arrival. */
    if (ms < RESUME_PERIODS * 25 / 2)
        dg_fail("%u periods completed in %lu ms: not paced by the device", RESUME_PERIODS, ms);
}
