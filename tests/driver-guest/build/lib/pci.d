build/lib/pci.o: lib/pci.c lib/pci.h lib/util.h lib/irq.h
lib/pci.h:
lib/util.h:
lib/irq.h:
