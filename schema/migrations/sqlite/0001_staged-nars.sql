CREATE TABLE `staged_nars` (
	`id` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`cache_id` integer NOT NULL,
	`file` text NOT NULL,
	`storage_key` text NOT NULL,
	`received_compression` text NOT NULL,
	`received_file_hash` text NOT NULL,
	`received_file_size` integer NOT NULL,
	`compression` text NOT NULL,
	`file_hash` text NOT NULL,
	`file_size` integer NOT NULL,
	`nar_hash` text NOT NULL,
	`nar_size` integer NOT NULL,
	`listing` text NOT NULL,
	`created_at` integer DEFAULT (CAST(unixepoch('subsec') * 1000 AS INTEGER)) NOT NULL,
	FOREIGN KEY (`cache_id`) REFERENCES `caches`(`id`) ON UPDATE no action ON DELETE cascade
);
--> statement-breakpoint
CREATE UNIQUE INDEX `staged_nars_cache_file` ON `staged_nars` (`cache_id`,`file`);--> statement-breakpoint
CREATE UNIQUE INDEX `staged_nars_storage_key` ON `staged_nars` (`storage_key`);