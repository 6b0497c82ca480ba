/* snd-play: plays the counter pattern on output stream 0 until the VM is stopped from outside
 * (the Rust test sends Canto a stop signal). Prints `DG snd-play: playing` after the first
 * period completes; never reaches PASS on its own. */
#include "dg.h"
#include "irq.h"
#include "serial.h"
#include "snd_util.h"
#include "tests.h"

#define PLAY_PERIOD 4800 /* 25 ms of S16/48k/stereo */
#define PLAY_SAMPLES_PER_PERIOD (PLAY_PERIOD / 2)
static u8 play_pcm[4][PLAY_PERIOD] ALIGNED(64);
static struct snd_io play_msgs[4];

void test_snd_play(void)
{
    snd_up();
    struct virtq *tx = &snd.vq[SND_TXQ];
    snd_set_params_ok(0, 4 * PLAY_PERIOD, PLAY_PERIOD);
    snd_cmd_ok(SND_R_PCM_PREPARE, 0);
    u32 sent = 0;
    for (int i = 0; i < 4; i++) {
        play_msgs[i] = (struct snd_io){.stream_id = 0, .data = play_pcm[i], .len = PLAY_PERIOD};
        snd_fill_counter(play_pcm[i], PLAY_PERIOD, sent++ * PLAY_SAMPLES_PER_PERIOD);
        snd_io_add(tx, &play_msgs[i]);
    }
    virtq_kick(tx);
    snd_cmd_ok(SND_R_PCM_START, 0);
    for (u64 done = 0;; done++) {
        u32 len;
        struct snd_io *m = snd_io_wait(tx, play_msgs, 4, &len, 1000, "snd-play");
        if (m->st.status != SND_S_OK)
            dg_fail("period %lu: status 0x%x (%s)", done, m->st.status, snd_status_name(m->st.status));
        if (done == 0)
            dg_log("snd-play: playing");
        /* The counter wraps every 65536 samples; `sent` wrapping after years is harmless. */
        snd_fill_counter(m->data, PLAY_PERIOD, sent++ * PLAY_SAMPLES_PER_PERIOD);
        snd_io_add(tx, m);
        virtq_kick(tx);
    }
}
