/* Every test, for main.c's table. */
#ifndef DG_TESTS_H
#define DG_TESTS_H

void test_hello(void);
void test_exception(void);
void test_enumerate(void);
void test_rng(void);
void test_reset(void);
void test_garbage(void);
void test_rtt(void);
void test_rng_batch(void);
void test_rng_event_idx(void);
void test_bus_master(void);
void test_snd_control(void);
void test_snd_tx(void);
void test_snd_tx_late_write(void);
void test_snd_rx(void);
void test_snd_bad_io(void);
void test_snd_release_flush(void);
void test_snd_reset(void);
void test_snd_flood(void);
void test_snd_host_fault(void);
void test_snd_play(void);
void test_virtq_attacks(void);
void test_soak(void);
void test_internal_error(void);
void test_serial_echo(void);
void test_blk(void);
void test_vsock(void);

#endif
