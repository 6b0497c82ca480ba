#!/usr/bin/env python3
"""Write Canto's guest test signal: 48 kHz, stereo, S16_LE, 2.0 s (96000 frames).

Left:  linear chirp 200 Hz -> 12 kHz, peak 12000 (about -8.7 dBFS).
Right: seeded 32-bit LCG noise, uniform in [-1024, 1023] (about -30 dBFS).

Integer arithmetic only (phase accumulator + Bhaskara sine approximation), so
the bytes are identical on every machine and every run. Nothing in it repeats:
the chirp's frequency rises every sample and the LCG's period is 2**32.

Usage: make-test-wav.py OUTPUT.wav
"""
import array
import sys
import wave

RATE = 48000
FRAMES = 2 * RATE
F0, F1 = 200, 12000          # Hz
CHIRP_PEAK = 12000
NOISE_SHIFT = 21             # top 11 bits of the LCG state -> [-1024, 1023]
SEED = 0x43414E54            # "CANT"

HALF = 1 << 31               # phase units per half cycle (pi)
FULL = 1 << 32


def isin(phase):
    """sin(2*pi*phase/2**32) * CHIRP_PEAK, Bhaskara I approximation, integers."""
    u = phase & (HALF - 1)   # position inside the current half cycle
    uv = u * (HALF - u)
    s = (16 * CHIRP_PEAK * uv) // (5 * HALF * HALF - 4 * uv)
    return -s if phase & HALF else s


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    samples = array.array("h")
    phase = 0
    lcg = SEED
    for n in range(FRAMES):
        samples.append(isin(phase))
        lcg = (1664525 * lcg + 1013904223) % FULL
        samples.append((lcg >> NOISE_SHIFT) - 1024)
        # instantaneous frequency f(n) = F0 + (F1 - F0) * n / FRAMES
        phase = (phase + ((F0 * FRAMES + (F1 - F0) * n) * FULL) // (RATE * FRAMES)) % FULL
    if sys.byteorder != "little":
        samples.byteswap()
    with wave.open(sys.argv[1], "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(samples.tobytes())


if __name__ == "__main__":
    main()
