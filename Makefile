# pipeline_ext: PGXS build.  See README.md for the two commands that set up,
# build, install and test everything on a fresh Debian machine.

EXTENSION = pipeline_ext
MODULE_big = pipeline_ext
OBJS = \
	src/pipeline_ext.o \
	src/shmem.o \
	src/histogram.o \
	src/lag.o \
	src/kafka_props.o \
	src/kafka_client.o \
	src/eventhubs.o \
	src/connection.o \
	src/registry.o \
	src/producer.o \
	src/produce.o \
	src/outbox.o \
	src/outbox_resend.o \
	src/outbox_commits.o \
	src/capture.o \
	src/capture_follow.o \
	src/capture_rows.o \
	src/capture_settings.o \
	src/capture_sql.o \
	src/relay.o \
	src/relay_checkpoint.o \
	src/relay_choose.o \
	src/relay_kafka.o \
	src/relay_stats.o \
	src/consumer_catalog.o \
	src/consumer_api.o \
	src/offsets_api.o \
	src/deadletter_api.o \
	src/target.o \
	src/decode.o \
	src/decode_json.o \
	src/decode_csv.o \
	src/avro_json.o \
	src/avro_schemas.o \
	src/avro_check.o \
	src/decode_avro.o \
	src/decode_avro_flat.o \
	src/avro_values.o \
	src/avro_encode.o \
	src/avro_row_schema.o \
	src/decode_raw.o \
	src/decode_time.o \
	src/batch.o \
	src/aggregate.o \
	src/aggregate_alter.o \
	src/aggregate_api.o \
	src/aggregate_parse.o \
	src/aggregate_close.o \
	src/aggregate_defs.o \
	src/aggregate_drop.o \
	src/aggregate_emit.o \
	src/aggregate_merge.o \
	src/aggregate_group.o \
	src/aggregate_pre.o \
	src/aggregate_direct.o \
	src/dedup.o \
	src/apply.o \
	src/apply_append.o \
	src/deadletter.o \
	src/launcher.o \
	src/manager.o \
	src/probe.o \
	src/slot.o \
	src/slot_assign.o \
	src/slot_batch.o \
	src/slot_handoff.o \
	src/slot_metrics.o \
	src/offsets.o \
	src/stats.o

DATA = $(wildcard sql/pipeline_ext--*.sql)

PG_CONFIG ?= $(shell test -x /usr/lib/postgresql/15/bin/pg_config && echo /usr/lib/postgresql/15/bin/pg_config || echo pg_config)

PG_CPPFLAGS = -I$(srcdir)/src
# CI builds with WERROR=1 (test/setup.sh does when CI is set)
PG_CFLAGS += -Wall -Wextra $(if $(WERROR),-Werror)
SHLIB_LINK = -lrdkafka -lavro -lcurl

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

# Every object depends on the headers (PGXS does not track headers unless
# PostgreSQL was configured with --enable-depend).
$(OBJS): $(wildcard src/*.h)

# The test and demo broker (test/broker/); not installed.
BROKER = test/broker/pe_broker
all: $(BROKER)
$(BROKER): test/broker/pe_broker.c
	$(CC) $(CFLAGS) -Wall -Wextra $(if $(WERROR),-Werror) -O2 -o $@ $< -lrdkafka

EXTRA_CLEAN = $(BROKER) results tmp_check tmp_check_regress regression.diffs regression.out

# pg_regress --temp-instance and the TAP tests run initdb and postgres, which
# refuse to run as root: test/check.sh takes care of that, and is what README.md
# tells users to run.
