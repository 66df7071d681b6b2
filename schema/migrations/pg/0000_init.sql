CREATE TABLE "build_logs" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"drv" text NOT NULL,
	"storage_key" text NOT NULL,
	"size" bigint NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "caches" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"public" boolean DEFAULT true NOT NULL,
	"priority" integer DEFAULT 40 NOT NULL,
	"store_dir" text DEFAULT '/nix/store' NOT NULL,
	"description" text DEFAULT '' NOT NULL,
	"upstream_keys" text DEFAULT '' NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL,
	CONSTRAINT "caches_name_unique" UNIQUE("name")
);
--> statement-breakpoint
CREATE TABLE "nar_listings" (
	"nar_id" integer PRIMARY KEY NOT NULL,
	"listing" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "nars" (
	"id" serial PRIMARY KEY NOT NULL,
	"nar_hash" text NOT NULL,
	"nar_size" bigint NOT NULL,
	"compression" text NOT NULL,
	"file_hash" text NOT NULL,
	"file_size" bigint NOT NULL,
	"storage_key" text NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "paths" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"hash" text NOT NULL,
	"store_path" text NOT NULL,
	"nar_id" integer NOT NULL,
	"references" text NOT NULL,
	"deriver" text,
	"system" text,
	"ca" text,
	"sigs" text NOT NULL,
	"pushed_by" integer,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL,
	"last_accessed_at" bigint
);
--> statement-breakpoint
CREATE TABLE "pending_uploads" (
	"id" serial PRIMARY KEY NOT NULL,
	"storage_key" text NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL,
	CONSTRAINT "pending_uploads_storage_key_unique" UNIQUE("storage_key")
);
--> statement-breakpoint
CREATE TABLE "realisations" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"output_id" text NOT NULL,
	"content" text NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL
);
--> statement-breakpoint
CREATE TABLE "signing_keys" (
	"id" serial PRIMARY KEY NOT NULL,
	"cache_id" integer NOT NULL,
	"name" text NOT NULL,
	"public_key" text NOT NULL,
	"secret_encrypted" text NOT NULL,
	"active" boolean DEFAULT true NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL,
	"retired_at" bigint
);
--> statement-breakpoint
CREATE TABLE "tokens" (
	"id" serial PRIMARY KEY NOT NULL,
	"name" text NOT NULL,
	"secret_hash" text NOT NULL,
	"prefix" text NOT NULL,
	"caches" text NOT NULL,
	"permissions" text NOT NULL,
	"created_at" bigint DEFAULT (floor(extract(epoch from clock_timestamp()) * 1000))::bigint NOT NULL,
	"expires_at" bigint,
	"revoked_at" bigint,
	"last_used_at" bigint,
	CONSTRAINT "tokens_secret_hash_unique" UNIQUE("secret_hash")
);
--> statement-breakpoint
ALTER TABLE "build_logs" ADD CONSTRAINT "build_logs_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "nar_listings" ADD CONSTRAINT "nar_listings_nar_id_nars_id_fk" FOREIGN KEY ("nar_id") REFERENCES "public"."nars"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "paths" ADD CONSTRAINT "paths_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "paths" ADD CONSTRAINT "paths_nar_id_nars_id_fk" FOREIGN KEY ("nar_id") REFERENCES "public"."nars"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "realisations" ADD CONSTRAINT "realisations_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "signing_keys" ADD CONSTRAINT "signing_keys_cache_id_caches_id_fk" FOREIGN KEY ("cache_id") REFERENCES "public"."caches"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE UNIQUE INDEX "build_logs_cache_drv" ON "build_logs" USING btree ("cache_id","drv");--> statement-breakpoint
CREATE UNIQUE INDEX "nars_nar_hash" ON "nars" USING btree ("nar_hash");--> statement-breakpoint
CREATE UNIQUE INDEX "nars_file_hash" ON "nars" USING btree ("file_hash");--> statement-breakpoint
CREATE UNIQUE INDEX "nars_storage_key" ON "nars" USING btree ("storage_key");--> statement-breakpoint
CREATE UNIQUE INDEX "paths_cache_hash" ON "paths" USING btree ("cache_id","hash");--> statement-breakpoint
CREATE INDEX "paths_nar" ON "paths" USING btree ("nar_id");--> statement-breakpoint
CREATE UNIQUE INDEX "realisations_cache_output" ON "realisations" USING btree ("cache_id","output_id");--> statement-breakpoint
CREATE INDEX "signing_keys_cache" ON "signing_keys" USING btree ("cache_id");