build/tests/garbage.o: tests/garbage.c lib/dg.h lib/util.h lib/irq.h \
 tests/rng_util.h lib/virtio.h lib/pci.h lib/serial.h tests/tests.h
lib/dg.h:
lib/util.h:
lib/irq.h:
tests/rng_util.h:
lib/virtio.h:
lib/pci.h:
lib/serial.h:
tests/tests.h:
