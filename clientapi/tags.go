package clientapi

import "github.com/gorilla/mux"

func (a *API) tagRoutes(r *mux.Router) {}
