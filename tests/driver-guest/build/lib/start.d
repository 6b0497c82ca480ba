build/lib/start.o: lib/start.S
