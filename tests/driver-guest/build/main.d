build/main.o: main.c lib/dg.h lib/util.h lib/irq.h lib/serial.h \
 tests/tests.h
lib/dg.h:
lib/util.h:
lib/irq.h:
lib/serial.h:
tests/tests.h:
