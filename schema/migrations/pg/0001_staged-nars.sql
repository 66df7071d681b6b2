CREATE TABLE "staged_nars" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"file" text NOT NULL,
	"storage_key" text NOT NULL,
	"received_compression" text NOT NULL,
	"received_file_hash" text NOT NULL,
	"received_file_size" bigint NOT NULL,
	"compression" text NOT NULL,
	"file_hash" text NOT NULL,
	"file_size" bigint NOT NULL,
	"nar_hash" text NOT NULL,
	"nar_size" bigint NOT NULL,
	"listing" text NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL
);
--> statement-breakpoint
ALTER TABLE "staged_nars" ADD CONSTRAINT "staged_nars_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "staged_nars_cache_file" ON "staged_nars" USING btree ("cache_id","file");--> statement-breakpoint
CREATE UNIQUE INDEX "staged_nars_storage_key" ON "staged_nars" USING btree ("storage_key");