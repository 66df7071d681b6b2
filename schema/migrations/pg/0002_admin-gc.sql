CREATE TABLE "cache_daily_stats" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"day" bigint NOT NULL,
	"narinfo_hits" bigint DEFAULT 0 NOT NULL,
	"narinfo_misses" bigint DEFAULT 0 NOT NULL,
	"nar_downloads" bigint DEFAULT 0 NOT NULL,
	"nar_bytes" bigint DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "gc_runs" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_name" text,
	"trigger" text NOT NULL,
	"dry_run" boolean NOT NULL,
	"started_at" bigint NOT NULL,
	"finished_at" bigint NOT NULL,
	"report" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "leases" (
	"name" text PRIMARY KEY NOT NULL,
	"holder" text NOT NULL,
	"expires_at" bigint NOT NULL
);
--> statement-breakpoint
ALTER TABLE "caches" ADD COLUMN "retention_seconds" bigint;--> statement-breakpoint
ALTER TABLE "caches" ADD COLUMN "quota_bytes" bigint;--> statement-breakpoint
ALTER TABLE "caches" ADD COLUMN "deleted_at" bigint;--> statement-breakpoint
ALTER TABLE "nars" ADD COLUMN "unreferenced_at" bigint;--> statement-breakpoint
ALTER TABLE "paths" ADD COLUMN "pinned" boolean DEFAULT false NOT NULL;--> statement-breakpoint
ALTER TABLE "cache_daily_stats" ADD CONSTRAINT "cache_daily_stats_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "cache_daily_stats_cache_day" ON "cache_daily_stats" USING btree ("cache_id","day");--> statement-breakpoint
CREATE INDEX "paths_cache_created" ON "paths" USING btree ("cache_id","created_at");