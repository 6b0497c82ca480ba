build/lib/dg.o: lib/dg.c lib/dg.h lib/util.h lib/serial.h
lib/dg.h:
lib/util.h:
lib/serial.h:
