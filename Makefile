# pipeline_ext: PGXS build.  See README.md for the two commands that set up,
# build, install and test everything on a fresh Debian machine.

EXTENSION = pipeline_ext
MODULE_big = pipeline_ext
OBJS = \
	src/pipeline_ext.o \
	src/shmem.o \
	src/kafka_conf.o \
	src/connection.o \
	src/produce.o \
	src/target.o \
	src/consumer.o \
	src/worker.o \
	src/probe.o \
	src/stats.o

DATA = $(wildcard sql/pipeline_ext--*.sql)

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)

PG_CPPFLAGS = -I$(srcdir)/src
# CI builds with WERROR=1 (test/setup.sh does when CI is set)
PG_CFLAGS += -Wall -Wextra $(if $(WERROR),-Werror)
SHLIB_LINK = -lrdkafka

REGRESS = setup connections eventhubs privileges produce_errors consumers upgrade
REGRESS_OPTS = --temp-config=$(srcdir)/test/pipeline_ext.conf --temp-instance=./tmp_check_regress

TAP_TESTS = 1
PROVE_TESTS = test/t/*.pl
PROVE_FLAGS = -I $(srcdir)/test/perl

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PostgreSQL's headers are not -Wextra clean (unused parameters in inline
# functions): include them as system headers so that -Wall -Wextra (and
# -Werror in CI) judge our code alone.
override CPPFLAGS := $(patsubst -I%,-isystem %,$(filter -I/%,$(CPPFLAGS))) $(filter-out -I/%,$(CPPFLAGS))

# Every object depends on the shared header (PGXS does not track headers
# unless PostgreSQL was configured with --enable-depend).
$(OBJS): src/pipeline_ext.h

# The test and demo broker (test/broker/); not installed.
BROKER = test/broker/pe_broker
all: $(BROKER)
$(BROKER): test/broker/pe_broker.c
	$(CC) $(CFLAGS) -Wall -Wextra $(if $(WERROR),-Werror) -O2 -o $@ $< -lrdkafka

EXTRA_CLEAN = $(BROKER) results tmp_check tmp_check_regress regression.diffs regression.out

# pg_regress --temp-instance and the TAP tests run initdb and postgres, which
# refuse to run as root: test/check.sh takes care of that, and is what README.md
# tells users to run.
