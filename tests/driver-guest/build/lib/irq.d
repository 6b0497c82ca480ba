build/lib/irq.o: lib/irq.c lib/irq.h lib/util.h lib/dg.h lib/serial.h
lib/irq.h:
lib/util.h:
lib/dg.h:
lib/serial.h:
