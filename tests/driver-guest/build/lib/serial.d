build/lib/serial.o: lib/serial.c lib/serial.h lib/util.h
lib/serial.h:
lib/util.h:
