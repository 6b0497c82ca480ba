build/tests/basic.o: tests/basic.c lib/dg.h lib/util.h lib/irq.h \
 lib/pci.h lib/serial.h tests/tests.h lib/virtio.h lib/pci.h
lib/dg.h:
lib/util.h:
lib/irq.h:
lib/pci.h:
lib/serial.h:
tests/tests.h:
lib/virtio.h:
lib/pci.h:
