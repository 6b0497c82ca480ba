build/lib/virtio.o: lib/virtio.c lib/virtio.h lib/pci.h lib/util.h \
 lib/dg.h lib/irq.h lib/serial.h
lib/virtio.h:
lib/pci.h:
lib/util.h:
lib/dg.h:
lib/irq.h:
lib/serial.h:
